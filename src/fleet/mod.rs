//! Groups of clusters: cluster-wide restore points and group feed control.
//!
//! STUB by the `fleet` agent so that `Config` can carry `[[group]]`; the `restorepoints`
//! agent owns this module and replaces this file.

pub mod group;
