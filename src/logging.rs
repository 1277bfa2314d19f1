//! Log output: the format (`text` or `json`) and the level filter.
//!
//! Owns: installing the `tracing` subscriber. The level filter uses `RUST_LOG` syntax
//! (`info`, `warn,walrelay::archive=debug`, ...); it comes from `$WALRELAY_LOG`, else the
//! configuration's `log.level`, else the command's default (`-v` raises it). The JSON
//! format writes one object per line with `timestamp` (RFC 3339 UTC), `level`, `target`,
//! `message` and any structured fields. Must not: decide what is logged.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json` (the configuration's `log.format`).
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "invalid log.format \"{other}\": use \"text\" or \"json\""
            )),
        }
    }
}

/// The level filter: `$WALRELAY_LOG`, else `configured`, else `default`.
pub fn filter(configured: Option<&str>, default: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_env("WALRELAY_LOG")
        .ok()
        .or_else(|| configured.and_then(|c| EnvFilter::try_new(c).ok()))
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Installs the subscriber (once per process; later calls do nothing).
pub fn init(format: LogFormat, configured: Option<&str>, default: &str) {
    let filter = filter(configured, default);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => b.with_ansi(false).event_format(Json).try_init(),
    };
}

/// The JSON line format.
pub struct Json;

#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// One event as a JSON object (without the trailing newline).
pub fn event_json(
    level: &str,
    target: &str,
    unix: f64,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut m = serde_json::Map::new();
    m.insert("timestamp".into(), crate::ops::rfc3339(unix).into());
    m.insert("level".into(), level.into());
    m.insert("target".into(), target.into());
    let mut fields = fields;
    m.insert(
        "message".into(),
        fields.remove("message").unwrap_or_else(|| "".into()),
    );
    for (k, v) in fields {
        m.entry(k).or_insert(v);
    }
    serde_json::Value::Object(m).to_string()
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        writeln!(
            writer,
            "{}",
            event_json(meta.level().as_str(), meta.target(), unix, f.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse() {
        let mut f = serde_json::Map::new();
        f.insert("message".into(), "a \"quoted\"\nline".into());
        f.insert("segment".into(), "000000010000000000000003".into());
        let line = event_json("INFO", "walrelay::ops", 1_700_000_000.5, f);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.500Z");
        assert_eq!(v["segment"], "000000010000000000000003");
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert!(LogFormat::parse("xml").is_err());
    }
}
