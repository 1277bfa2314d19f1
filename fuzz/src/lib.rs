//! walrelay's fuzz targets as a library: the binaries in `fuzz_targets/` hand libFuzzer's input
//! to these functions. See `targets.rs` and docs/fuzzing.md.
pub mod targets;
pub use targets::TARGETS;
