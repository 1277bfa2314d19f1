//! `[[group]]` configuration.
//!
//! STUB by the `fleet` agent (the `restorepoints` agent owns this file and replaces it
//! whole): only what `Config` needs to carry the section.

use serde::Deserialize;

/// One `[[group]]`: clusters of this walrelay taken together.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupConfig {
    pub name: String,
    #[serde(default)]
    pub clusters: Vec<String>,
}
