//! pg_receivewal's `--help` and `--version` texts.
//!
//! Owns: the wording (PostgreSQL 18's, with walrelay's name where the text says who to
//! report bugs to). Must not: parse options.

/// The PostgreSQL release whose pg_receivewal this mode imitates (printed by `--version`).
pub const IMITATED_VERSION: &str = "18.0";

/// `--version`: `pg_receivewal (walrelay X.Y.Z) 18.0`. Barman removes the text in
/// parentheses and reads the second word as the version (it needs `N.N` and at least the
/// server's major version); the parentheses say that this is walrelay, where the real one
/// says `(PostgreSQL)`.
pub fn version() -> String {
    format!(
        "pg_receivewal (walrelay {}) {IMITATED_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `--help` for `command` (the invoked name, or `walrelay receive`).
pub fn help(command: &str) -> String {
    format!(
        "{command} receives PostgreSQL streaming write-ahead logs.

Usage:
  {command} [OPTION]...

Options:
  -D, --directory=DIR    receive write-ahead log files into this directory
  -E, --endpos=LSN       exit after receiving the specified LSN
      --if-not-exists    do not error if slot already exists when creating a slot
  -n, --no-loop          do not loop on connection lost
      --no-sync          do not wait for changes to be written safely to disk
  -s, --status-interval=SECS
                         time between status packets sent to server (default: 10)
  -S, --slot=SLOTNAME    replication slot to use
      --synchronous      flush write-ahead log immediately after writing
  -v, --verbose          output verbose messages
  -V, --version          output version information, then exit
  -Z, --compress=METHOD[:DETAIL]
                         compress as specified
  -?, --help             show this help, then exit

Connection options:
  -d, --dbname=CONNSTR   connection string
  -h, --host=HOSTNAME    database server host or socket directory
  -p, --port=PORT        database server port number
  -U, --username=NAME    connect as specified database user
  -w, --no-password      never prompt for password
  -W, --password         force password prompt (should happen automatically)

Optional actions:
      --create-slot      create a new replication slot (for the slot's name see --slot)
      --drop-slot        drop the replication slot (for the slot's name see --slot)

This is walrelay {}, a pg_receivewal replacement.
walrelay home page: <https://github.com/walrelay/walrelay>
",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lines_fit_postgresql_limit() {
        for cmd in ["pg_receivewal", "walrelay receive"] {
            let h = help(cmd);
            assert!(h.starts_with(&format!(
                "{cmd} receives PostgreSQL streaming write-ahead logs.\n"
            )));
            for line in h.lines() {
                assert!(line.len() <= 95, "too long: {line:?}");
            }
            for opt in [
                "--directory",
                "--endpos",
                "--if-not-exists",
                "--no-loop",
                "--no-sync",
                "--status-interval",
                "--slot",
                "--synchronous",
                "--verbose",
                "--version",
                "--compress",
                "--help",
                "--dbname",
                "--host",
                "--port",
                "--username",
                "--no-password",
                "--password",
                "--create-slot",
                "--drop-slot",
            ] {
                assert!(h.contains(opt), "{opt} missing");
            }
        }
    }

    /// Barman's parser: strip "(...)", take the second word, which must match
    /// `(\d+)(\.(\d+)|devel|beta|alpha|rc).*`.
    #[test]
    fn version_parses_like_barman() {
        let v = version();
        assert!(v.contains("walrelay"));
        let mut stripped = String::new();
        let mut depth = 0;
        for c in v.trim().chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => stripped.push(c),
                _ => {}
            }
        }
        let word = stripped.split_whitespace().nth(1).unwrap();
        assert_eq!(word, "18.0");
        let (major, minor) = word.split_once('.').unwrap();
        assert!(major.parse::<u32>().unwrap() >= 18 && minor.parse::<u32>().is_ok());
    }
}
