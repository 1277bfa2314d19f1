//! pg_receivewal's messages: PostgreSQL's frontend logging format and wording.
//!
//! Owns: `PROG: error: …` / `PROG: detail: …` / `PROG: hint: …` / `PROG: …` (info) lines on
//! standard error (`pg_log_*`), the tracing subscriber that prints the library's log events in
//! that format, libc's `strerror` texts, and the wording of messages for errors of the
//! upstream connection and the store. Must not: decide what to do about an error.

use std::fmt;
use std::io::{self, Write};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::store::StoreError;
use crate::upstream::error::UpstreamError;
use crate::upstream::receiver::ReceiverError;

/// The `PROG: level: ` prefix of PostgreSQL's frontend messages.
#[derive(Debug, Clone)]
pub struct Log {
    pub prog: String,
}

impl Log {
    pub fn line(&self, level: &str, msg: &str) -> String {
        let msg = msg.strip_suffix('\n').unwrap_or(msg);
        if level.is_empty() {
            format!("{}: {msg}", self.prog)
        } else {
            format!("{}: {level}: {msg}", self.prog)
        }
    }
    fn print(&self, level: &str, msg: &str) {
        let _ = writeln!(io::stderr().lock(), "{}", self.line(level, msg));
    }
    pub fn error(&self, msg: &str) {
        self.print("error", msg)
    }
    pub fn hint(&self, msg: &str) {
        self.print("hint", msg)
    }
    pub fn info(&self, msg: &str) {
        self.print("", msg)
    }
}

/// `strerror(errno)` for an I/O error (without Rust's "(os error N)").
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local
            // string, copied out at once.
            let p = unsafe { libc::strerror(code) };
            if p.is_null() {
                return e.to_string();
            }
            // SAFETY: p is non-null and NUL-terminated (above).
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
        None => e.to_string(),
    }
}

/// `could not open directory "D": strerror` (pg_receivewal's check of `-D`).
pub fn open_directory_failed(dir: &str, e: &io::Error) -> String {
    format!("could not open directory \"{dir}\": {}", strerror(e))
}

/// `could not send replication command "CMD": ERROR:  …` (libpq's PQerrorMessage of the
/// server's error), as `streamutil.c` words a failed replication command.
pub fn command_failed(cmd: &str, e: &UpstreamError) -> String {
    format!("could not send replication command \"{cmd}\": {e}")
}

/// The message pg_receivewal prints when a streaming attempt ends in error.
pub fn receiver_error(e: &ReceiverError) -> String {
    match e {
        ReceiverError::Store(StoreError::Io { op, path, source }) => {
            format!(
                "could not {op} file \"{}\": {}",
                path.display(),
                strerror(source)
            )
        }
        _ => e.to_string(),
    }
}

/// `CheckServerVersionForStreaming`: the server's major version must lie between 9.3 and the
/// imitated release.
pub fn check_server_version(version_num: u32, server_version: &str) -> Result<(), String> {
    let major = version_num / 100;
    let max: u32 = super::usage::IMITATED_VERSION
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(18)
        * 100;
    let shown = if server_version.is_empty() {
        "'unknown'"
    } else {
        server_version
    };
    if major < 903 {
        Err(format!("incompatible server version {shown}; client does not support streaming from server versions older than 9.3"))
    } else if major > max {
        Err(format!("incompatible server version {shown}; client does not support streaming from server versions newer than {}", super::usage::IMITATED_VERSION))
    } else {
        Ok(())
    }
}

/// Prints tracing events like `pg_log_*`: `PROG: MESSAGE` for info, `PROG: error: …`,
/// `PROG: warning: …`, `PROG: debug: …`.
pub struct PgFormat {
    pub prog: String,
}

impl<S, N> FormatEvent<S, N> for PgFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}: ", self.prog)?;
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            Level::INFO => {}
            _ => write!(writer, "debug: ")?,
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Routes walrelay's log events to standard error in pg_receivewal's format: warnings and
/// errors always, progress (`info`) with `-v`, debugging (and the connection's per-host
/// attempts) with `-vv`, or as `WALRELAY_LOG` says.
pub fn init_tracing(prog: &str, verbose: u32) {
    // The connection's per-host log lines would repeat the error pg_receivewal prints once
    // (libpq logs nothing per host); they show from -vv on.
    let default = match verbose {
        0 => "warn,walrelay::upstream::conn=error",
        1 => "info,walrelay::upstream::conn=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        .event_format(PgFormat {
            prog: prog.to_string(),
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines() {
        let l = Log {
            prog: "pg_receivewal".into(),
        };
        assert_eq!(
            l.line("error", "replication slot \"x\" does not exist\n"),
            "pg_receivewal: error: replication slot \"x\" does not exist"
        );
        assert_eq!(
            l.line("hint", "Try \"pg_receivewal --help\" for more information."),
            "pg_receivewal: hint: Try \"pg_receivewal --help\" for more information."
        );
        assert_eq!(
            l.line("", "starting log streaming at 0/1000000 (timeline 1)"),
            "pg_receivewal: starting log streaming at 0/1000000 (timeline 1)"
        );
    }

    #[test]
    fn strerror_texts() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(strerror(&e), "No such file or directory");
        assert_eq!(
            open_directory_failed("/nope", &e),
            "could not open directory \"/nope\": No such file or directory"
        );
    }

    #[test]
    fn server_version_range() {
        assert_eq!(check_server_version(150004, "15.4"), Ok(()));
        assert_eq!(check_server_version(180001, "18.1"), Ok(()));
        assert_eq!(check_server_version(90300, "9.3.25"), Ok(()));
        assert_eq!(
            check_server_version(90224, "9.2.24"),
            Err("incompatible server version 9.2.24; client does not support streaming from server versions older than 9.3".into())
        );
        assert_eq!(
            check_server_version(190000, "19devel"),
            Err("incompatible server version 19devel; client does not support streaming from server versions newer than 18.0".into())
        );
    }
}
