//! pg_receivewal's command line: its option table, value parsing and the combination checks
//! `pg_receivewal.c` (PostgreSQL 18) makes, with its messages.
//!
//! Owns: turning argv into [`Options`] or a [`UsageError`]. Must not: connect or touch files.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use super::getopt::{self, LongOpt};
use crate::lsn::Lsn;
use crate::store::compress::{Compression, Method};

/// Option keys: the short letter, or pg_receivewal's numbers for long-only options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Short(char),
    CreateSlot,
    DropSlot,
    IfNotExists,
    Synchronous,
    NoSync,
}

/// pg_receivewal 18's `long_options` table.
const LONG: &[LongOpt<Key>] = &[
    long("help", false, Key::Short('?')),
    long("version", false, Key::Short('V')),
    long("directory", true, Key::Short('D')),
    long("dbname", true, Key::Short('d')),
    long("endpos", true, Key::Short('E')),
    long("host", true, Key::Short('h')),
    long("port", true, Key::Short('p')),
    long("username", true, Key::Short('U')),
    long("no-loop", false, Key::Short('n')),
    long("no-password", false, Key::Short('w')),
    long("password", false, Key::Short('W')),
    long("status-interval", true, Key::Short('s')),
    long("slot", true, Key::Short('S')),
    long("verbose", false, Key::Short('v')),
    long("compress", true, Key::Short('Z')),
    long("create-slot", false, Key::CreateSlot),
    long("drop-slot", false, Key::DropSlot),
    long("if-not-exists", false, Key::IfNotExists),
    long("synchronous", false, Key::Synchronous),
    long("no-sync", false, Key::NoSync),
];

const SHORT: &str = "d:D:E:h:np:s:S:U:vwWZ:";

const fn long(name: &'static str, has_arg: bool, key: Key) -> LongOpt<Key> {
    LongOpt { name, has_arg, key }
}

/// `-w` / `-W` / neither (libpq's `dbgetpassword` -1 / 1 / 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordPrompt {
    /// Prompt when the server asks for a password and none is known (and a terminal exists).
    #[default]
    Auto,
    /// `-w`: never prompt.
    Never,
    /// `-W`: prompt before connecting.
    Always,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub directory: Option<String>,
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub username: Option<String>,
    pub endpos: Option<Lsn>,
    pub no_loop: bool,
    pub password: PasswordPrompt,
    /// Seconds between status packets; 0 sends none.
    pub status_interval: u32,
    pub slot: Option<String>,
    pub verbose: u32,
    pub compression: Compression,
    pub create_slot: bool,
    pub drop_slot: bool,
    pub if_not_exists: bool,
    pub synchronous: bool,
    pub no_sync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            directory: None,
            dbname: None,
            host: None,
            port: None,
            username: None,
            endpos: None,
            no_loop: false,
            password: PasswordPrompt::Auto,
            status_interval: 10,
            slot: None,
            verbose: 0,
            compression: Compression::none(),
            create_slot: false,
            drop_slot: false,
            if_not_exists: false,
            synchronous: false,
            no_sync: false,
        }
    }
}

/// What the invocation amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Help,
    Version,
    Run(Box<Options>),
}

/// Why the command line is refused. `hint`: pg_receivewal adds its "Try --help" hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// getopt's own complaint (already prefixed with argv[0]), then the hint.
    Getopt(String),
    /// `-?`/`--help` not in first position: getopt returns '?', pg_receivewal prints only
    /// the hint.
    HintOnly,
    /// `pg_receivewal: error: MSG` and, when `hint`, the hint line.
    Error { msg: String, hint: bool },
}

/// Parses pg_receivewal's arguments (without argv[0]).
pub fn parse(argv0: &str, args: &[String]) -> Result<Action, UsageError> {
    match args.first().map(String::as_str) {
        Some("--help") | Some("-?") => return Ok(Action::Help),
        Some("-V") | Some("--version") => return Ok(Action::Version),
        _ => {}
    }
    let parsed =
        getopt::parse(argv0, args, SHORT, Key::Short, LONG).map_err(|e| UsageError::Getopt(e.0))?;
    let mut o = Options::default();
    let mut compress_alg = "none".to_string();
    let mut compress_detail: Option<String> = None;
    let fatal = |msg: String| UsageError::Error { msg, hint: false };
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            Key::Short('d') => o.dbname = Some(arg),
            Key::Short('D') => o.directory = Some(arg),
            Key::Short('E') => {
                o.endpos = Some(
                    parse_lsn(&arg)
                        .ok_or_else(|| fatal(format!("could not parse end position \"{arg}\"")))?,
                )
            }
            Key::Short('h') => o.host = Some(arg),
            Key::Short('n') => o.no_loop = true,
            Key::Short('p') => o.port = Some(arg),
            Key::Short('s') => {
                o.status_interval =
                    parse_int(&arg, "-s/--status-interval", 0, i32::MAX / 1000).map_err(fatal)?
            }
            Key::Short('S') => o.slot = Some(arg),
            Key::Short('U') => o.username = Some(arg),
            Key::Short('v') => o.verbose = o.verbose.saturating_add(1),
            Key::Short('w') => o.password = PasswordPrompt::Never,
            Key::Short('W') => o.password = PasswordPrompt::Always,
            Key::Short('Z') => (compress_alg, compress_detail) = split_compress_option(&arg),
            Key::CreateSlot => o.create_slot = true,
            Key::DropSlot => o.drop_slot = true,
            Key::IfNotExists => o.if_not_exists = true,
            Key::Synchronous => o.synchronous = true,
            Key::NoSync => o.no_sync = true,
            // '?' and 'V' after the first position, like any getopt '?': only the hint.
            Key::Short(_) => return Err(UsageError::HintOnly),
        }
    }
    let usage = |msg: &str| UsageError::Error {
        msg: msg.to_string(),
        hint: true,
    };
    if let Some(first) = parsed.operands.first() {
        return Err(usage(&format!(
            "too many command-line arguments (first is \"{first}\")"
        )));
    }
    if o.drop_slot && o.create_slot {
        return Err(usage("cannot use --create-slot together with --drop-slot"));
    }
    if o.slot.is_none() && (o.drop_slot || o.create_slot) {
        let opt = if o.drop_slot {
            "--drop-slot"
        } else {
            "--create-slot"
        };
        return Err(usage(&format!(
            "{opt} needs a slot to be specified using --slot"
        )));
    }
    if o.synchronous && o.no_sync {
        return Err(usage("cannot use --synchronous together with --no-sync"));
    }
    if o.directory.is_none() && !o.drop_slot && !o.create_slot {
        return Err(usage("no target directory specified"));
    }
    o.compression = compression_spec(&compress_alg, compress_detail.as_deref()).map_err(fatal)?;
    Ok(Action::Run(Box::new(o)))
}

/// `sscanf(arg, "%X/%X")`: leading blanks and an optional `0x` allowed in each half, trailing
/// text ignored.
fn parse_lsn(s: &str) -> Option<Lsn> {
    fn hex(s: &str) -> Option<(u32, &str)> {
        let s = s.trim_start();
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((u32::from_str_radix(s.get(..end)?, 16).ok()?, s.get(end..)?))
    }
    let (hi, rest) = hex(s)?;
    let rest = rest.strip_prefix('/')?;
    let (lo, _) = hex(rest)?;
    Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
}

/// `option_parse_int`: base 10, surrounding blanks allowed.
fn parse_int(s: &str, name: &str, min: i32, max: i32) -> Result<u32, String> {
    let t = s.trim_start();
    let digits = t.trim_end();
    let ok = !digits.is_empty()
        && digits
            .strip_prefix(['-', '+'])
            .unwrap_or(digits)
            .chars()
            .all(|c| c.is_ascii_digit())
        && digits.len() > usize::from(digits.starts_with(['-', '+']));
    if !ok {
        return Err(format!("invalid value \"{s}\" for option {name}"));
    }
    match digits.parse::<i64>() {
        Ok(v) if (i64::from(min)..=i64::from(max)).contains(&v) => Ok(v as u32),
        _ => Err(format!("{name} must be in range {min}..{max}")),
    }
}

/// PostgreSQL 18's `parse_compress_options`: a bare integer is a level (0: none, else gzip);
/// otherwise `METHOD[:DETAIL]`.
fn split_compress_option(s: &str) -> (String, Option<String>) {
    if let Some(n) = bare_integer(s) {
        return if n == 0 {
            ("none".into(), None)
        } else {
            ("gzip".into(), Some(s.into()))
        };
    }
    match s.split_once(':') {
        Some((a, d)) => (a.into(), Some(d.into())),
        None => (s.into(), None),
    }
}

/// `strtol(s, &end, 10)` consuming the whole string (the empty string counts as 0).
fn bare_integer(s: &str) -> Option<i64> {
    let t = s.trim_start();
    if t.is_empty() {
        return Some(0);
    }
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(t.parse::<i64>().unwrap_or(if t.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    }))
}

/// `parse_compress_algorithm` + `parse_compress_specification` +
/// `validate_compress_specification`, then pg_receivewal's refusal of zstd.
pub fn compression_spec(alg: &str, detail: Option<&str>) -> Result<Compression, String> {
    let method = match alg {
        "none" => None,
        "gzip" => Some(Method::Gzip),
        "lz4" => Some(Method::Lz4),
        "zstd" => {
            // validated like the others first (range -131072..22), then refused
            let invalid = |e: String| format!("invalid compression specification: {e}");
            let spec = parse_detail(detail, 3).map_err(invalid)?;
            check_level("zstd", spec.level, -131072, 22, 3).map_err(invalid)?;
            check_zstd_only("zstd", &spec).map_err(invalid)?;
            return Err("compression with ZSTD is not yet supported".into());
        }
        _ => return Err(format!("unrecognized compression algorithm: \"{alg}\"")),
    };
    let default = match method {
        None | Some(Method::Lz4) => 0,
        Some(Method::Gzip) => -1,
    };
    let invalid = |e: String| format!("invalid compression specification: {e}");
    let spec = parse_detail(detail, default).map_err(invalid)?;
    match method {
        None if spec.level != 0 => {
            return Err(invalid(format!(
                "compression algorithm \"{alg}\" does not accept a compression level"
            )))
        }
        None => check_level(alg, spec.level, 1, 1, 0).map_err(invalid)?,
        Some(Method::Gzip) => check_level(alg, spec.level, 1, 9, -1).map_err(invalid)?,
        Some(Method::Lz4) => check_level(alg, spec.level, 1, 12, 0).map_err(invalid)?,
    }
    check_zstd_only(alg, &spec).map_err(invalid)?;
    Ok(Compression {
        method,
        level: spec.level,
    })
}

struct Detail {
    level: i64,
    workers: bool,
    long_distance: bool,
}

/// `parse_compress_specification`: a bare integer level, or `keyword[=value],...`.
fn parse_detail(detail: Option<&str>, default: i64) -> Result<Detail, String> {
    let invalid = |e: String| e;
    let mut d = Detail {
        level: default,
        workers: false,
        long_distance: false,
    };
    let Some(spec) = detail else { return Ok(d) };
    if let Some(n) = bare_integer(spec).filter(|_| !spec.is_empty()) {
        d.level = n;
        return Ok(d);
    }
    for item in spec.split(',') {
        let (kw, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if kw.is_empty() {
            return Err(invalid(
                "found empty string where a compression option was expected".into(),
            ));
        }
        let integer = |v: Option<&str>| -> Result<i64, String> {
            let v =
                v.ok_or_else(|| invalid(format!("compression option \"{kw}\" requires a value")))?;
            match bare_integer(v) {
                Some(n) if !v.trim_start().is_empty() => Ok(n),
                _ => Err(invalid(format!(
                    "value for compression option \"{kw}\" must be an integer"
                ))),
            }
        };
        match kw {
            "level" => d.level = integer(value)?,
            "workers" => {
                integer(value)?;
                d.workers = true;
            }
            "long" => {
                if let Some(v) = value {
                    if parse_bool(v).is_none() {
                        return Err(invalid(format!(
                            "value for compression option \"{kw}\" must be a Boolean value"
                        )));
                    }
                }
                d.long_distance = true;
            }
            _ => {
                return Err(invalid(format!(
                    "unrecognized compression option: \"{kw}\""
                )))
            }
        }
    }
    Ok(d)
}

/// PostgreSQL's `parse_bool`: unique prefixes of true/false/yes/no/on/off, 1/0.
fn parse_bool(v: &str) -> Option<bool> {
    let l = v.to_ascii_lowercase();
    let pre = |w: &str, min: usize| l.len() >= min && w.starts_with(&l);
    if pre("true", 1) || pre("yes", 1) || pre("on", 2) || l == "1" {
        Some(true)
    } else if pre("false", 1) || pre("no", 1) || pre("off", 2) || l == "0" {
        Some(false)
    } else {
        None
    }
}

fn check_level(alg: &str, level: i64, min: i64, max: i64, default: i64) -> Result<(), String> {
    if (level < min || level > max) && level != default {
        return Err(format!("compression algorithm \"{alg}\" expects a compression level between {min} and {max} (default at {default})"));
    }
    Ok(())
}

fn check_zstd_only(alg: &str, d: &Detail) -> Result<(), String> {
    if alg != "zstd" && d.workers {
        return Err(format!(
            "compression algorithm \"{alg}\" does not accept a worker count"
        ));
    }
    if alg != "zstd" && d.long_distance {
        return Err(format!(
            "compression algorithm \"{alg}\" does not support long-distance mode"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Action, UsageError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse("/usr/bin/pg_receivewal", &args)
    }

    fn opts(args: &[&str]) -> Options {
        match run(args) {
            Ok(Action::Run(o)) => *o,
            other => panic!("{other:?}"),
        }
    }

    fn err(args: &[&str]) -> UsageError {
        run(args).unwrap_err()
    }

    fn usage(msg: &str) -> UsageError {
        UsageError::Error {
            msg: msg.into(),
            hint: true,
        }
    }

    fn fatal(msg: &str) -> UsageError {
        UsageError::Error {
            msg: msg.into(),
            hint: false,
        }
    }

    #[test]
    fn help_and_version_only_in_first_position() {
        assert_eq!(run(&["--help"]), Ok(Action::Help));
        assert_eq!(run(&["-?", "-D", "x"]), Ok(Action::Help));
        assert_eq!(run(&["-V"]), Ok(Action::Version));
        assert_eq!(run(&["--version"]), Ok(Action::Version));
        assert_eq!(err(&["-D", "x", "--help"]), UsageError::HintOnly);
        assert_eq!(err(&["-D", "x", "--vers"]), UsageError::HintOnly);
        assert_eq!(
            err(&["-D", "x", "-?"]),
            UsageError::Getopt("/usr/bin/pg_receivewal: invalid option -- '?'".into())
        );
    }

    #[test]
    fn every_option_and_last_one_wins() {
        let o = opts(&[
            "-Dfirst",
            "--directory=/wal",
            "-d",
            "host=a",
            "-E",
            "1/AB",
            "-h",
            "h",
            "-p",
            "5433",
            "-U",
            "u",
            "-nvv",
            "-w",
            "-s",
            "0",
            "-S",
            "s",
            "--no-sync",
            "--if-not-exists",
            "-Z",
            "lz4",
        ]);
        assert_eq!(o.directory.as_deref(), Some("/wal"));
        assert_eq!(o.dbname.as_deref(), Some("host=a"));
        assert_eq!(o.endpos, Some(Lsn(0x1_0000_00AB)));
        assert_eq!(o.host.as_deref(), Some("h"));
        assert_eq!(o.port.as_deref(), Some("5433"));
        assert_eq!(o.username.as_deref(), Some("u"));
        assert!(o.no_loop && o.no_sync && o.if_not_exists);
        assert_eq!(o.verbose, 2);
        assert_eq!(o.password, PasswordPrompt::Never);
        assert_eq!(o.status_interval, 0);
        assert_eq!(o.compression.method, Some(Method::Lz4));
        assert_eq!(
            opts(&["-D", "d", "-w", "-W"]).password,
            PasswordPrompt::Always
        );
        assert_eq!(opts(&["-D", "d"]).status_interval, 10);
        assert!(opts(&["--slot", "s", "--create-slot"]).create_slot);
    }

    #[test]
    fn pg_receivewal_combination_checks() {
        assert_eq!(err(&[]), usage("no target directory specified"));
        assert_eq!(
            err(&["-D", "d", "--create-slot", "--drop-slot"]),
            usage("cannot use --create-slot together with --drop-slot")
        );
        assert_eq!(
            err(&["-D", "d", "-S", "s", "--create-slot", "--drop-slot"]),
            usage("cannot use --create-slot together with --drop-slot")
        );
        assert_eq!(
            err(&["-D", "d", "--create-slot"]),
            usage("--create-slot needs a slot to be specified using --slot")
        );
        assert_eq!(
            err(&["--drop-slot"]),
            usage("--drop-slot needs a slot to be specified using --slot")
        );
        assert_eq!(
            err(&["-D", "d", "--synchronous", "--no-sync"]),
            usage("cannot use --synchronous together with --no-sync")
        );
        assert_eq!(
            err(&["-D", "d", "extra", "more"]),
            usage("too many command-line arguments (first is \"extra\")")
        );
        assert_eq!(
            err(&["--not-a-valid-option"]),
            UsageError::Getopt(
                "/usr/bin/pg_receivewal: unrecognized option '--not-a-valid-option'".into()
            )
        );
    }

    #[test]
    fn value_errors() {
        assert_eq!(
            err(&["-D", "d", "-E", "zz"]),
            fatal("could not parse end position \"zz\"")
        );
        assert_eq!(
            err(&["-D", "d", "-s", "x"]),
            fatal("invalid value \"x\" for option -s/--status-interval")
        );
        assert_eq!(
            err(&["-D", "d", "-s", "-1"]),
            fatal("-s/--status-interval must be in range 0..2147483")
        );
        assert_eq!(opts(&["-D", "d", "-s", " 7 "]).status_interval, 7);
    }

    #[test]
    fn compression_forms() {
        let c = |z: &str| opts(&["-D", "d", "-Z", z]).compression;
        let e = |z: &str| match err(&["-D", "d", "-Z", z]) {
            UsageError::Error { msg, hint: false } => msg,
            other => panic!("{other:?}"),
        };
        assert_eq!(c("0"), Compression::none());
        assert_eq!(c("none"), Compression::none());
        assert_eq!(c("none:0"), Compression::none());
        assert_eq!(
            c("5"),
            Compression {
                method: Some(Method::Gzip),
                level: 5
            }
        );
        assert_eq!(
            c("gzip"),
            Compression {
                method: Some(Method::Gzip),
                level: -1
            }
        );
        assert_eq!(
            c("gzip:1"),
            Compression {
                method: Some(Method::Gzip),
                level: 1
            }
        );
        assert_eq!(
            c("gzip:level=9"),
            Compression {
                method: Some(Method::Gzip),
                level: 9
            }
        );
        assert_eq!(
            c("lz4"),
            Compression {
                method: Some(Method::Lz4),
                level: 0
            }
        );
        assert_eq!(
            c("lz4:level=12"),
            Compression {
                method: Some(Method::Lz4),
                level: 12
            }
        );
        assert_eq!(
            e("none:1"),
            "invalid compression specification: compression algorithm \"none\" does not accept a compression level"
        );
        assert_eq!(
            e("gzip:10"),
            "invalid compression specification: compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)"
        );
        assert_eq!(
            e("lz4:13"),
            "invalid compression specification: compression algorithm \"lz4\" expects a compression level between 1 and 12 (default at 0)"
        );
        assert_eq!(e("zstd"), "compression with ZSTD is not yet supported");
        assert_eq!(e("bzip2"), "unrecognized compression algorithm: \"bzip2\"");
        assert_eq!(
            e("gzip:level"),
            "invalid compression specification: compression option \"level\" requires a value"
        );
        assert_eq!(
            e("gzip:level=x"),
            "invalid compression specification: value for compression option \"level\" must be an integer"
        );
        assert_eq!(
            e("gzip:fast"),
            "invalid compression specification: unrecognized compression option: \"fast\""
        );
        assert_eq!(
            e("gzip:workers=2"),
            "invalid compression specification: compression algorithm \"gzip\" does not accept a worker count"
        );
        assert_eq!(
            e("lz4:long"),
            "invalid compression specification: compression algorithm \"lz4\" does not support long-distance mode"
        );
        assert_eq!(
            e("gzip:,"),
            "invalid compression specification: found empty string where a compression option was expected"
        );
    }
}
