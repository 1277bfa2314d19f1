//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) and the regression seeds
//! (`fuzz/regressions/<target>/`: inputs that once made walrelay panic) through the fuzz
//! targets' own functions (`fuzz/src/targets.rs`) on every `cargo test`: no input may panic.
//! The coverage-guided campaigns themselves run with `fuzz/run.sh` (docs/fuzzing.md).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/targets.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().take(256).map(|x| format!("{x:02x}")).collect()
}

/// Runs every file of `fuzz/<kind>/<target>/` through its target; returns (count, panics).
fn replay(kind: &str) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut panics = Vec::new();
    for (name, f) in targets::TARGETS {
        for file in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&file).expect("read seed");
            count += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panics.push(format!(
                    "{name}: {} (input hex {}): {msg}",
                    file.display(),
                    hex(&data)
                ));
            }
        }
    }
    (count, panics)
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    for (name, _) in targets::TARGETS {
        assert!(
            !inputs(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz target {name} has no seed in fuzz/corpus/{name}"
        );
    }
    let (count, panics) = replay("corpus");
    assert!(count >= targets::TARGETS.len());
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
}

#[test]
fn fuzz_regressions_replay_without_panic() {
    let (count, panics) = replay("regressions");
    assert!(count > 0, "no regression seeds under fuzz/regressions");
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
}
