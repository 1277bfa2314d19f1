//! The replication command language a walsender accepts in simple queries.
//!
//! Owns: a lexer and recursive-descent parser equivalent to PostgreSQL's `repl_scanner.l` /
//! `repl_gram.y` (13–18), plus the checks `walsender.c` makes on CREATE_REPLICATION_SLOT
//! options, with PostgreSQL's error texts and SQLSTATEs. Must not: execute anything.
//!
//! Lexing follows flex's longest-match rule: upper-case keywords only (`start_replication` is
//! an identifier, hence SQL); identifiers are downcased (ASCII) and truncated to 63 bytes;
//! `"…"` identifiers keep their case, with `""` for a quote; `'…'` strings with `''`;
//! `hex/hex` LSNs; decimal numbers. Tokens are read lazily, one ahead, as bison does, so a
//! syntax error is reported before a later unterminated quote, as PostgreSQL would.
//!
//! A query whose first token is not a command keyword is [`ReplicationCommand::Sql`].
//! BASE_BACKUP takes the PG 15+ `( … )` options and the ≤ 14 keyword syntax, both checked
//! as `basebackup.c`'s `parse_basebackup_options` checks them (same texts and SQLSTATEs);
//! what walrelay then refuses (INCREMENTAL, server-side compression, other targets, WAL)
//! is the handler's decision (`server/cmd/base_backup.rs`).

use crate::error::{codes, SqlState};
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    Physical,
    Logical { plugin: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    IdentifySystem,
    Show(String),
    TimelineHistory(u32),
    ReadReplicationSlot(String),
    CreateReplicationSlot {
        name: String,
        temporary: bool,
        kind: SlotKind,
        reserve_wal: bool,
    },
    DropReplicationSlot {
        name: String,
        wait: bool,
    },
    /// Plugin options of logical replication are checked for syntax and dropped.
    StartReplication {
        slot: Option<String>,
        logical: bool,
        start: Lsn,
        timeline: Option<u32>,
    },
    BaseBackup(BaseBackupOptions),
    AlterReplicationSlot,
    UploadManifest,
    /// Not a replication command (a physical walsender answers 0A000).
    Sql(String),
}

/// A command rejected the way PostgreSQL would reject it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// 42601: `syntax error`, `unterminated quoted string`, `invalid timeline 0`,
    /// `conflicting or redundant options`, `reserve_wal requires a Boolean value`, …
    #[error("{0}")]
    Syntax(String),
    /// 22023: a `snapshot` option value other than export/nothing/use.
    #[error("unrecognized value for CREATE_REPLICATION_SLOT option \"{option}\": \"{value}\"")]
    InvalidOptionValue { option: String, value: String },
    /// XX000 (PostgreSQL uses `elog`): an unknown CREATE_REPLICATION_SLOT option.
    #[error("unrecognized option: {0}")]
    UnrecognizedOption(String),
    /// 22003: MAX_RATE outside 32 .. 1048576.
    #[error("{0} is outside the valid range for parameter \"MAX_RATE\" (32 .. 1048576)")]
    MaxRateRange(i64),
}

/// MANIFEST of BASE_BACKUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestOption {
    #[default]
    No,
    Yes,
    ForceEncode,
}

/// The options of BASE_BACKUP after `parse_basebackup_options`' checks and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// The ≤ 14 keyword syntax (`LABEL 'x' FAST WAL …`) rather than `( … )`.
    pub legacy_syntax: bool,
    /// "base backup" unless given.
    pub label: String,
    pub progress: bool,
    pub fast_checkpoint: bool,
    pub wait: bool,
    pub wal: bool,
    pub incremental: bool,
    /// kB/s; 0: unlimited.
    pub max_rate: u32,
    pub tablespace_map: bool,
    pub verify_checksums: bool,
    pub manifest: ManifestOption,
    /// Upper-cased algorithm (`CRC32C` default; `NONE` without a manifest).
    pub manifest_checksums: String,
    /// `None`: no TARGET (the client).
    pub target: Option<String>,
    pub target_detail: Option<String>,
    /// Lower-cased algorithm (`none`, `gzip`, `lz4`, `zstd`); `None`: not given.
    pub compression: Option<String>,
    pub compression_detail: Option<String>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            legacy_syntax: false,
            label: "base backup".into(),
            progress: false,
            fast_checkpoint: false,
            wait: true,
            wal: false,
            incremental: false,
            max_rate: 0,
            tablespace_map: false,
            verify_checksums: true,
            manifest: ManifestOption::No,
            manifest_checksums: "NONE".into(),
            target: None,
            target_detail: None,
            compression: None,
            compression_detail: None,
        }
    }
}

impl SqlState for CommandError {
    fn sqlstate(&self) -> &'static str {
        match self {
            CommandError::Syntax(_) => codes::SYNTAX_ERROR,
            CommandError::InvalidOptionValue { .. } => codes::INVALID_PARAMETER_VALUE,
            CommandError::UnrecognizedOption(_) => codes::INTERNAL_ERROR,
            CommandError::MaxRateRange(_) => NUMERIC_VALUE_OUT_OF_RANGE,
        }
    }
}

/// 22003 (`ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE`).
const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";

fn syntax(msg: &str) -> CommandError {
    CommandError::Syntax(msg.to_string())
}

/// Parses one simple-query string.
pub fn parse_command(query: &str) -> Result<ReplicationCommand, CommandError> {
    let mut p = Parser {
        lex: Lexer {
            s: query.as_bytes(),
            pos: 0,
        },
        peeked: None,
    };
    let Tok::Kw(kw) = p.next()? else {
        return Ok(ReplicationCommand::Sql(query.to_string()));
    };
    let cmd = match kw {
        Kw::IdentifySystem => ReplicationCommand::IdentifySystem,
        Kw::Show => ReplicationCommand::Show(p.var_name()?),
        Kw::ReadReplicationSlot => ReplicationCommand::ReadReplicationSlot(p.var_name()?),
        Kw::TimelineHistory => ReplicationCommand::TimelineHistory(p.timeline()?),
        Kw::DropReplicationSlot => {
            let name = p.ident()?;
            let wait = p.accept(&Tok::Kw(Kw::Wait))?;
            ReplicationCommand::DropReplicationSlot { name, wait }
        }
        Kw::UploadManifest => ReplicationCommand::UploadManifest,
        Kw::AlterReplicationSlot => {
            p.ident()?;
            p.expect(&Tok::Char(b'('))?;
            p.generic_options()?;
            ReplicationCommand::AlterReplicationSlot
        }
        Kw::BaseBackup => {
            let (legacy, options) = if p.accept(&Tok::Char(b'('))? {
                (false, p.generic_options()?)
            } else {
                (true, p.legacy_base_backup_options()?)
            };
            p.end()?;
            return base_backup_options(legacy, options).map(ReplicationCommand::BaseBackup);
        }
        Kw::StartReplication => p.start_replication()?,
        Kw::CreateReplicationSlot => {
            let (cmd, options) = p.create_slot()?;
            p.end()?;
            return apply_slot_options(cmd, options);
        }
        _ => return Ok(ReplicationCommand::Sql(query.to_string())),
    };
    p.end()?;
    Ok(cmd)
}

macro_rules! keywords {
    ($($v:ident = $s:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Kw { $($v),* }
        impl Kw {
            fn from_bytes(b: &[u8]) -> Option<Kw> {
                match b { $($s => Some(Kw::$v),)* _ => None }
            }
            fn name(self) -> &'static str {
                match self { $(Kw::$v => std::str::from_utf8($s).unwrap_or_default(),)* }
            }
        }
    };
}

keywords! {
    BaseBackup = b"BASE_BACKUP",
    IdentifySystem = b"IDENTIFY_SYSTEM",
    ReadReplicationSlot = b"READ_REPLICATION_SLOT",
    Show = b"SHOW",
    Timeline = b"TIMELINE",
    StartReplication = b"START_REPLICATION",
    CreateReplicationSlot = b"CREATE_REPLICATION_SLOT",
    DropReplicationSlot = b"DROP_REPLICATION_SLOT",
    AlterReplicationSlot = b"ALTER_REPLICATION_SLOT",
    TimelineHistory = b"TIMELINE_HISTORY",
    Physical = b"PHYSICAL",
    ReserveWal = b"RESERVE_WAL",
    Logical = b"LOGICAL",
    Slot = b"SLOT",
    Temporary = b"TEMPORARY",
    TwoPhase = b"TWO_PHASE",
    ExportSnapshot = b"EXPORT_SNAPSHOT",
    NoexportSnapshot = b"NOEXPORT_SNAPSHOT",
    UseSnapshot = b"USE_SNAPSHOT",
    Wait = b"WAIT",
    UploadManifest = b"UPLOAD_MANIFEST",
    Label = b"LABEL",
    Progress = b"PROGRESS",
    Fast = b"FAST",
    Wal = b"WAL",
    Nowait = b"NOWAIT",
    MaxRate = b"MAX_RATE",
    TablespaceMap = b"TABLESPACE_MAP",
    NoverifyChecksums = b"NOVERIFY_CHECKSUMS",
    Manifest = b"MANIFEST",
    ManifestChecksums = b"MANIFEST_CHECKSUMS",
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Kw(Kw),
    Ident(String),
    SConst(String),
    UConst(u32),
    RecPtr(Lsn),
    Char(u8),
    Eof,
}

/// NAMEDATALEN - 1.
const MAX_IDENT_LEN: usize = 63;

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }
    /// Length of the run starting at `from` whose bytes satisfy `f`.
    fn run(&self, from: usize, f: impl Fn(u8) -> bool) -> usize {
        self.s
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| f(b))
            .count()
    }
    fn slice(&self, from: usize, to: usize) -> &[u8] {
        self.s.get(from..to).unwrap_or_default()
    }

    fn next(&mut self) -> Result<Tok, CommandError> {
        // Positions stay within `s` (run() counts bytes of it): saturating adds never saturate.
        self.pos = self.pos.saturating_add(self.run(self.pos, |b| {
            matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
        }));
        let start = self.pos;
        let Some(c) = self.at(start) else {
            return Ok(Tok::Eof);
        };
        // Longest match among RECPTR, UCONST and identifier/keyword.
        let hex = self.run(start, |b| b.is_ascii_hexdigit());
        let slash = start.saturating_add(hex);
        let lo_start = slash.saturating_add(1);
        if hex > 0 && self.at(slash) == Some(b'/') {
            let lo = self.run(lo_start, |b| b.is_ascii_hexdigit());
            if lo > 0 {
                self.pos = lo_start.saturating_add(lo);
                let hi = self.slice(start, slash);
                let lo = self.slice(lo_start, self.pos);
                return parse_hex32(hi)
                    .zip(parse_hex32(lo))
                    .map(|(h, l)| Tok::RecPtr(Lsn((u64::from(h) << 32) | u64::from(l))))
                    .ok_or_else(|| syntax("invalid streaming start location"));
            }
        }
        if c.is_ascii_digit() {
            let n = self.run(start, |b| b.is_ascii_digit());
            self.pos = start.saturating_add(n);
            // strtoul saturates at ULONG_MAX; the grammar keeps the low 32 bits.
            let v = self.slice(start, self.pos).iter().fold(0u64, |acc, d| {
                acc.checked_mul(10)
                    .and_then(|a| a.checked_add(u64::from(d.saturating_sub(b'0'))))
                    .unwrap_or(u64::MAX)
            });
            return Ok(Tok::UConst(v as u32));
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let n = self.run(start, |b| {
                b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
            });
            self.pos = start.saturating_add(n);
            let word = self.slice(start, self.pos);
            if let Some(kw) = Kw::from_bytes(word) {
                return Ok(Tok::Kw(kw));
            }
            return Ok(Tok::Ident(ident(word.to_ascii_lowercase())?));
        }
        if c == b'\'' || c == b'"' {
            let mut lit = Vec::new();
            let mut i = start.saturating_add(1);
            loop {
                match self.at(i) {
                    None => return Err(syntax("unterminated quoted string")),
                    Some(q) if q == c => {
                        if self.at(i.saturating_add(1)) == Some(c) {
                            lit.push(c);
                            i = i.saturating_add(2);
                        } else {
                            break;
                        }
                    }
                    Some(b) => {
                        lit.push(b);
                        i = i.saturating_add(1);
                    }
                }
            }
            self.pos = i.saturating_add(1);
            return if c == b'"' {
                Ok(Tok::Ident(ident(lit)?))
            } else {
                String::from_utf8(lit)
                    .map(Tok::SConst)
                    .map_err(|_| syntax("syntax error"))
            };
        }
        self.pos = start.saturating_add(1);
        Ok(Tok::Char(c))
    }
}

/// `%X` into 32 bits; more than 8 significant digits is refused (PostgreSQL would silently
/// keep the low bits).
fn parse_hex32(digits: &[u8]) -> Option<u32> {
    let first = digits
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(digits.len());
    let sig = digits.get(first..).unwrap_or_default();
    if sig.len() > 8 {
        return None;
    }
    sig.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some((acc << 4) | d)
    })
}

/// An identifier truncated to 63 bytes on a character boundary (`truncate_identifier`).
fn ident(bytes: Vec<u8>) -> Result<String, CommandError> {
    // Token boundaries fall on ASCII bytes, so this only fails for impossible input.
    let mut s = String::from_utf8(bytes).map_err(|_| syntax("syntax error"))?;
    if s.len() > MAX_IDENT_LEN {
        let mut n = MAX_IDENT_LEN;
        while !s.is_char_boundary(n) {
            n = n.saturating_sub(1);
        }
        s.truncate(n);
    }
    Ok(s)
}

/// A generic option value (`DefElem` argument).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OptVal {
    None,
    Str(String),
    Int(i32),
    Bool(bool),
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Tok>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&Tok, CommandError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.get_or_insert(Tok::Eof))
    }
    fn next(&mut self) -> Result<Tok, CommandError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }
    /// Consumes the next token if it is `t`.
    fn accept(&mut self, t: &Tok) -> Result<bool, CommandError> {
        if self.peek()? == t {
            self.next()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
    fn expect(&mut self, t: &Tok) -> Result<(), CommandError> {
        if self.accept(t)? {
            Ok(())
        } else {
            Err(syntax("syntax error"))
        }
    }
    fn ident(&mut self) -> Result<String, CommandError> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            _ => Err(syntax("syntax error")),
        }
    }
    /// `opt_semicolon` and the end of input.
    fn end(&mut self) -> Result<(), CommandError> {
        self.accept(&Tok::Char(b';'))?;
        self.expect(&Tok::Eof)
    }
    /// `IDENT ( '.' IDENT )*`.
    fn var_name(&mut self) -> Result<String, CommandError> {
        let mut name = self.ident()?;
        while self.accept(&Tok::Char(b'.'))? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }
    /// `UCONST`, which must not be 0.
    fn timeline(&mut self) -> Result<u32, CommandError> {
        match self.next()? {
            Tok::UConst(0) => Err(syntax("invalid timeline 0")),
            Tok::UConst(n) => Ok(n),
            _ => Err(syntax("syntax error")),
        }
    }
    fn recptr(&mut self) -> Result<Lsn, CommandError> {
        match self.next()? {
            Tok::RecPtr(l) => Ok(l),
            _ => Err(syntax("syntax error")),
        }
    }

    /// `generic_option_list ')'` (the `(` already consumed).
    fn generic_options(&mut self) -> Result<Vec<(String, OptVal)>, CommandError> {
        let mut opts = Vec::new();
        loop {
            let name = match self.next()? {
                Tok::Ident(s) => s,
                Tok::Kw(k) => k.name().to_ascii_lowercase(),
                _ => return Err(syntax("syntax error")),
            };
            let val = match self.peek()? {
                Tok::Ident(s) | Tok::SConst(s) => OptVal::Str(s.clone()),
                Tok::UConst(n) => OptVal::Int(i32::try_from(*n).unwrap_or(i32::MAX)),
                _ => OptVal::None,
            };
            if val != OptVal::None {
                self.next()?;
            }
            opts.push((name, val));
            if !self.accept(&Tok::Char(b','))? {
                self.expect(&Tok::Char(b')'))?;
                return Ok(opts);
            }
        }
    }

    /// The ≤ 14 BASE_BACKUP keywords (`base_backup_legacy_opt` of PG 15's grammar), as the
    /// generic options they stand for.
    fn legacy_base_backup_options(&mut self) -> Result<Vec<(String, OptVal)>, CommandError> {
        let mut opts = Vec::new();
        loop {
            let Tok::Kw(kw) = self.peek()?.clone() else {
                return Ok(opts);
            };
            let sconst = |p: &mut Self| match p.next()? {
                Tok::SConst(s) => Ok(OptVal::Str(s)),
                _ => Err(syntax("syntax error")),
            };
            let opt = match kw {
                Kw::Label => {
                    self.next()?;
                    ("label", sconst(self)?)
                }
                Kw::Progress => {
                    self.next()?;
                    ("progress", OptVal::Bool(true))
                }
                Kw::Fast => {
                    self.next()?;
                    ("checkpoint", OptVal::Str("fast".into()))
                }
                Kw::Wal => {
                    self.next()?;
                    ("wal", OptVal::Bool(true))
                }
                Kw::Nowait => {
                    self.next()?;
                    ("wait", OptVal::Bool(false))
                }
                Kw::MaxRate => {
                    self.next()?;
                    match self.next()? {
                        Tok::UConst(n) => (
                            "max_rate",
                            OptVal::Int(i32::try_from(n).unwrap_or(i32::MAX)),
                        ),
                        _ => return Err(syntax("syntax error")),
                    }
                }
                Kw::TablespaceMap => {
                    self.next()?;
                    ("tablespace_map", OptVal::Bool(true))
                }
                Kw::NoverifyChecksums => {
                    self.next()?;
                    ("verify_checksums", OptVal::Bool(false))
                }
                Kw::Manifest => {
                    self.next()?;
                    ("manifest", sconst(self)?)
                }
                Kw::ManifestChecksums => {
                    self.next()?;
                    ("manifest_checksums", sconst(self)?)
                }
                _ => return Ok(opts),
            };
            opts.push((opt.0.to_string(), opt.1));
        }
    }

    /// After START_REPLICATION: `[SLOT s] [PHYSICAL] X/X [TIMELINE n]` or
    /// `SLOT s LOGICAL X/X [( name ['value'], … )]`.
    fn start_replication(&mut self) -> Result<ReplicationCommand, CommandError> {
        let slot = if self.accept(&Tok::Kw(Kw::Slot))? {
            Some(self.ident()?)
        } else {
            None
        };
        if slot.is_some() && self.accept(&Tok::Kw(Kw::Logical))? {
            let start = self.recptr()?;
            if self.accept(&Tok::Char(b'('))? {
                loop {
                    self.ident()?;
                    if matches!(self.peek()?, Tok::SConst(_)) {
                        self.next()?;
                    }
                    if !self.accept(&Tok::Char(b','))? {
                        self.expect(&Tok::Char(b')'))?;
                        break;
                    }
                }
            }
            return Ok(ReplicationCommand::StartReplication {
                slot,
                logical: true,
                start,
                timeline: None,
            });
        }
        self.accept(&Tok::Kw(Kw::Physical))?;
        let start = self.recptr()?;
        let timeline = if self.accept(&Tok::Kw(Kw::Timeline))? {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(ReplicationCommand::StartReplication {
            slot,
            logical: false,
            start,
            timeline,
        })
    }

    /// After CREATE_REPLICATION_SLOT: `name [TEMPORARY] PHYSICAL|LOGICAL plugin` then either
    /// `( generic options )` or legacy option keywords. Options are returned unchecked.
    #[allow(clippy::type_complexity)]
    fn create_slot(&mut self) -> Result<(ReplicationCommand, Vec<(String, OptVal)>), CommandError> {
        let name = self.ident()?;
        let temporary = self.accept(&Tok::Kw(Kw::Temporary))?;
        let kind = match self.next()? {
            Tok::Kw(Kw::Physical) => SlotKind::Physical,
            Tok::Kw(Kw::Logical) => SlotKind::Logical {
                plugin: self.ident()?,
            },
            _ => return Err(syntax("syntax error")),
        };
        let mut options = Vec::new();
        if self.accept(&Tok::Char(b'('))? {
            options = self.generic_options()?;
        } else {
            loop {
                let opt = match self.peek()? {
                    Tok::Kw(Kw::ExportSnapshot) => ("snapshot", OptVal::Str("export".into())),
                    Tok::Kw(Kw::NoexportSnapshot) => ("snapshot", OptVal::Str("nothing".into())),
                    Tok::Kw(Kw::UseSnapshot) => ("snapshot", OptVal::Str("use".into())),
                    Tok::Kw(Kw::ReserveWal) => ("reserve_wal", OptVal::Bool(true)),
                    Tok::Kw(Kw::TwoPhase) => ("two_phase", OptVal::Bool(true)),
                    _ => break,
                };
                self.next()?;
                options.push((opt.0.to_string(), opt.1));
            }
        }
        let cmd = ReplicationCommand::CreateReplicationSlot {
            name,
            temporary,
            kind,
            reserve_wal: false,
        };
        Ok((cmd, options))
    }
}

/// `defGetString`.
fn opt_string(name: &str, v: &OptVal) -> Result<String, CommandError> {
    match v {
        OptVal::None => Err(CommandError::Syntax(format!("{name} requires a parameter"))),
        OptVal::Str(s) => Ok(s.clone()),
        OptVal::Int(n) => Ok(n.to_string()),
        OptVal::Bool(b) => Ok(b.to_string()),
    }
}

/// `defGetBoolean`.
fn opt_bool(name: &str, v: &OptVal) -> Result<bool, CommandError> {
    let r = match v {
        OptVal::None => Some(true),
        OptVal::Bool(b) => Some(*b),
        OptVal::Int(0) => Some(false),
        OptVal::Int(1) => Some(true),
        OptVal::Int(_) => None,
        OptVal::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" => Some(true),
            "false" | "off" => Some(false),
            _ => None,
        },
    };
    r.ok_or_else(|| CommandError::Syntax(format!("{name} requires a Boolean value")))
}

/// walsender.c `parseCreateReplSlotOptions` (15+; FAILOVER from 17).
fn apply_slot_options(
    mut cmd: ReplicationCommand,
    options: Vec<(String, OptVal)>,
) -> Result<ReplicationCommand, CommandError> {
    let ReplicationCommand::CreateReplicationSlot {
        kind, reserve_wal, ..
    } = &mut cmd
    else {
        return Ok(cmd);
    };
    let logical = matches!(kind, SlotKind::Logical { .. });
    let mut seen: Vec<&str> = Vec::new();
    for (name, val) in &options {
        let (key, allowed) = match name.as_str() {
            "snapshot" => ("snapshot", logical),
            "reserve_wal" => ("reserve_wal", !logical),
            "two_phase" => ("two_phase", logical),
            "failover" => ("failover", logical),
            other => return Err(CommandError::UnrecognizedOption(other.to_string())),
        };
        if seen.contains(&key) || !allowed {
            return Err(syntax("conflicting or redundant options"));
        }
        seen.push(key);
        match key {
            "snapshot" => {
                let v = opt_string(name, val)?;
                if !matches!(v.as_str(), "export" | "nothing" | "use") {
                    return Err(CommandError::InvalidOptionValue {
                        option: name.clone(),
                        value: v,
                    });
                }
            }
            "reserve_wal" => *reserve_wal = opt_bool(name, val)?,
            _ => {
                opt_bool(name, val)?;
            }
        }
    }
    Ok(cmd)
}

/// `parse_bool` (`bool.c`): true/false, yes/no, on/off, 1/0, case-insensitive, unique
/// prefixes accepted.
fn parse_bool(s: &str) -> Option<bool> {
    let l = s.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| l.len() >= min && word.starts_with(l.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || l == "1" || prefix_of("on", 2) {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || l == "0" || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// `defGetInt64` of MAX_RATE.
fn opt_int(name: &str, v: &OptVal) -> Result<i64, CommandError> {
    match v {
        OptVal::Int(n) => Ok(i64::from(*n)),
        OptVal::None => Err(CommandError::Syntax(format!("{name} requires a parameter"))),
        _ => Err(CommandError::Syntax(format!(
            "{name} requires an integer value"
        ))),
    }
}

/// `basebackup.c` `parse_basebackup_options` (PG 15–18): duplicates, values, defaults and
/// the cross-option checks, with PostgreSQL's texts (all 42601 but MAX_RATE's 22003).
fn base_backup_options(
    legacy_syntax: bool,
    options: Vec<(String, OptVal)>,
) -> Result<BaseBackupOptions, CommandError> {
    let mut o = BaseBackupOptions {
        legacy_syntax,
        manifest_checksums: "CRC32C".into(),
        ..BaseBackupOptions::default()
    };
    let mut seen: Vec<String> = Vec::new();
    let mut label = None;
    let mut checksums_given = false;
    for (name, val) in &options {
        if seen.contains(name) {
            return Err(CommandError::Syntax(format!("duplicate option \"{name}\"")));
        }
        match name.as_str() {
            "label" => label = Some(opt_string(name, val)?),
            "progress" => o.progress = opt_bool(name, val)?,
            "checkpoint" => {
                let v = opt_string(name, val)?;
                o.fast_checkpoint = match v.to_ascii_lowercase().as_str() {
                    "fast" => true,
                    "spread" => false,
                    _ => {
                        return Err(CommandError::Syntax(format!(
                            "unrecognized checkpoint type: \"{v}\""
                        )))
                    }
                };
            }
            "wait" => o.wait = opt_bool(name, val)?,
            "wal" => o.wal = opt_bool(name, val)?,
            "incremental" => o.incremental = opt_bool(name, val)?,
            "max_rate" => {
                let n = opt_int(name, val)?;
                if !(32..=1_048_576).contains(&n) {
                    return Err(CommandError::MaxRateRange(n));
                }
                o.max_rate = u32::try_from(n).unwrap_or(0);
            }
            "tablespace_map" => o.tablespace_map = opt_bool(name, val)?,
            "verify_checksums" => o.verify_checksums = opt_bool(name, val)?,
            "manifest" => {
                let v = opt_string(name, val)?;
                o.manifest = match parse_bool(&v) {
                    Some(true) => ManifestOption::Yes,
                    Some(false) => ManifestOption::No,
                    None if v.eq_ignore_ascii_case("force-encode") => ManifestOption::ForceEncode,
                    None => {
                        return Err(CommandError::Syntax(format!(
                            "unrecognized manifest option: \"{v}\""
                        )))
                    }
                };
            }
            "manifest_checksums" => {
                let v = opt_string(name, val)?;
                let up = v.to_ascii_uppercase();
                if !matches!(
                    up.as_str(),
                    "NONE" | "CRC32C" | "SHA224" | "SHA256" | "SHA384" | "SHA512"
                ) {
                    return Err(CommandError::Syntax(format!(
                        "unrecognized checksum algorithm: \"{v}\""
                    )));
                }
                o.manifest_checksums = up;
                checksums_given = true;
            }
            "target" => o.target = Some(opt_string(name, val)?),
            "target_detail" => o.target_detail = Some(opt_string(name, val)?),
            "compression" => {
                let v = opt_string(name, val)?;
                let low = v.to_ascii_lowercase();
                if !matches!(low.as_str(), "none" | "gzip" | "lz4" | "zstd") {
                    return Err(CommandError::Syntax(format!(
                        "unrecognized compression algorithm: \"{v}\""
                    )));
                }
                o.compression = Some(low);
            }
            "compression_detail" => o.compression_detail = Some(opt_string(name, val)?),
            other => {
                return Err(CommandError::Syntax(format!(
                    "unrecognized base backup option: \"{other}\""
                )))
            }
        }
        seen.push(name.clone());
    }
    if let Some(l) = label {
        o.label = l;
    }
    if o.manifest == ManifestOption::No {
        if checksums_given {
            return Err(syntax("manifest checksums require a backup manifest"));
        }
        o.manifest_checksums = "NONE".into();
    }
    match (&o.target, &o.target_detail) {
        (None, Some(_)) => return Err(syntax("target detail cannot be used without target")),
        (Some(t), Some(_)) if t == "client" => {
            return Err(CommandError::Syntax(format!(
                "target \"{t}\" does not accept a target detail"
            )))
        }
        _ => {}
    }
    if o.compression_detail.is_some() && o.compression.is_none() {
        return Err(syntax(
            "compression detail cannot be specified unless compression is enabled",
        ));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testutil::XorShift;
    use ReplicationCommand as C;

    fn ok(q: &str) -> ReplicationCommand {
        parse_command(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }
    fn err(q: &str) -> (String, &'static str) {
        let e = parse_command(q).expect_err(q);
        (e.to_string(), e.sqlstate())
    }
    fn physical(name: &str, temporary: bool, reserve_wal: bool) -> ReplicationCommand {
        C::CreateReplicationSlot {
            name: name.into(),
            temporary,
            kind: SlotKind::Physical,
            reserve_wal,
        }
    }
    fn start(slot: Option<&str>, lsn: u64, timeline: Option<u32>) -> ReplicationCommand {
        C::StartReplication {
            slot: slot.map(Into::into),
            logical: false,
            start: Lsn(lsn),
            timeline,
        }
    }

    #[test]
    fn simple_commands() {
        assert_eq!(ok("IDENTIFY_SYSTEM"), C::IdentifySystem);
        assert_eq!(ok("  IDENTIFY_SYSTEM ;"), C::IdentifySystem);
        assert_eq!(ok("IDENTIFY_SYSTEM;"), C::IdentifySystem);
        assert_eq!(
            ok("SHOW wal_segment_size"),
            C::Show("wal_segment_size".into())
        );
        assert_eq!(
            ok("SHOW Data_Directory_Mode"),
            C::Show("data_directory_mode".into())
        );
        assert_eq!(
            ok("SHOW \"Foo\".bar . \"x\"\"y\""),
            C::Show("Foo.bar.x\"y".into())
        );
        assert_eq!(ok("TIMELINE_HISTORY 2"), C::TimelineHistory(2));
        assert_eq!(
            ok("READ_REPLICATION_SLOT MySlot"),
            C::ReadReplicationSlot("myslot".into())
        );
        assert_eq!(
            ok("DROP_REPLICATION_SLOT \"s\" WAIT"),
            C::DropReplicationSlot {
                name: "s".into(),
                wait: true
            }
        );
        assert_eq!(
            ok("DROP_REPLICATION_SLOT s"),
            C::DropReplicationSlot {
                name: "s".into(),
                wait: false
            }
        );
        assert_eq!(ok("UPLOAD_MANIFEST"), C::UploadManifest);
        assert_eq!(
            ok("ALTER_REPLICATION_SLOT s (FAILOVER true, two_phase)"),
            C::AlterReplicationSlot
        );
        assert_eq!(
            ok("BASE_BACKUP"),
            C::BaseBackup(BaseBackupOptions {
                legacy_syntax: true,
                ..BaseBackupOptions::default()
            })
        );
    }

    #[test]
    fn sql_detection() {
        for q in [
            "start_replication 0/0",
            "SELECT pg_is_in_recovery()",
            "",
            "  ",
            "TIMELINE 1",
            "(IDENTIFY_SYSTEM)",
            "IDENTIFY_SYSTEMX",
            "identify_system",
            "\"IDENTIFY_SYSTEM\"",
        ] {
            assert_eq!(ok(q), C::Sql(q.into()), "{q}");
        }
    }

    #[test]
    fn start_replication() {
        assert_eq!(
            ok("START_REPLICATION 0/3000000"),
            start(None, 0x300_0000, None)
        );
        assert_eq!(
            ok("START_REPLICATION SLOT \"pg_walreceiver_1\" 16/B374D848 TIMELINE 3"),
            start(Some("pg_walreceiver_1"), 0x16_B374_D848, Some(3))
        );
        assert_eq!(
            ok("START_REPLICATION SLOT s PHYSICAL 0/03000000 TIMELINE 1;"),
            start(Some("s"), 0x300_0000, Some(1))
        );
        assert_eq!(
            ok("START_REPLICATION PHYSICAL ab/cd"),
            start(None, 0xab_0000_00cd, None)
        );
        assert_eq!(
            ok("START_REPLICATION PHYSICAL FFFFFFFF/FFFFFFFF"),
            start(None, u64::MAX, None)
        );
        assert_eq!(
            ok("START_REPLICATION SLOT sub LOGICAL 0/0 (proto_version '4', \"publication_names\" '\"p\"', binary)"),
            C::StartReplication { slot: Some("sub".into()), logical: true, start: Lsn(0), timeline: None }
        );
        assert_eq!(
            ok("START_REPLICATION SLOT sub LOGICAL 1/2"),
            C::StartReplication {
                slot: Some("sub".into()),
                logical: true,
                start: Lsn(0x1_0000_0002),
                timeline: None
            }
        );
        let syn = ("syntax error".to_string(), "42601");
        for q in [
            "START_REPLICATION",
            "START_REPLICATION LOGICAL 0/0",
            "START_REPLICATION SLOT 0/0",
            "START_REPLICATION 0/0 TIMELINE",
            "START_REPLICATION 0/0 TIMELINE x",
            "START_REPLICATION 0/0 TIMELINE 1 2",
            "START_REPLICATION 0/0;;",
            "START_REPLICATION 0/0 start_replication",
            "START_REPLICATION 0/ 0",
            "START_REPLICATION 0/0x",
            "START_REPLICATION SLOT s LOGICAL 0/0 TIMELINE 1",
            "START_REPLICATION SLOT s LOGICAL 0/0 (a 'b',)",
            "START_REPLICATION SLOT s LOGICAL 0/0 (a b)",
            "START_REPLICATION SLOT s LOGICAL 0/0 ()",
        ] {
            assert_eq!(err(q), syn, "{q}");
        }
        assert_eq!(
            err("START_REPLICATION 0/0 TIMELINE 0"),
            ("invalid timeline 0".into(), "42601")
        );
        assert_eq!(
            err("START_REPLICATION 1FFFFFFFF/0"),
            ("invalid streaming start location".into(), "42601")
        );
        // Leading zeros do not count against the 8 digits.
        assert_eq!(
            ok("START_REPLICATION 0000000001/1"),
            start(None, 0x1_0000_0001, None)
        );
    }

    #[test]
    fn create_replication_slot() {
        assert_eq!(
            ok("CREATE_REPLICATION_SLOT \"s\" PHYSICAL"),
            physical("s", false, false)
        );
        assert_eq!(
            ok("CREATE_REPLICATION_SLOT \"pg_walreceiver_7\" TEMPORARY PHYSICAL (RESERVE_WAL)"),
            physical("pg_walreceiver_7", true, true)
        );
        assert_eq!(
            ok("CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL"),
            physical("s", false, true)
        );
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("'on'", true),
            ("OFF", false),
            ("1", true),
            ("0", false),
        ] {
            assert_eq!(
                ok(&format!(
                    "CREATE_REPLICATION_SLOT s PHYSICAL (reserve_wal {v})"
                )),
                physical("s", false, want),
                "{v}"
            );
        }
        assert_eq!(
            ok("CREATE_REPLICATION_SLOT S TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE, FAILOVER false)"),
            C::CreateReplicationSlot {
                name: "s".into(),
                temporary: true,
                kind: SlotKind::Logical { plugin: "pgoutput".into() },
                reserve_wal: false
            }
        );
        assert_eq!(
            ok("CREATE_REPLICATION_SLOT s LOGICAL test_decoding NOEXPORT_SNAPSHOT"),
            C::CreateReplicationSlot {
                name: "s".into(),
                temporary: false,
                kind: SlotKind::Logical {
                    plugin: "test_decoding".into()
                },
                reserve_wal: false
            }
        );
        ok("CREATE_REPLICATION_SLOT s LOGICAL p TWO_PHASE USE_SNAPSHOT");
        ok("CREATE_REPLICATION_SLOT s LOGICAL p (snapshot export)");

        let conflict = ("conflicting or redundant options".to_string(), "42601");
        for q in [
            "CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL EXPORT_SNAPSHOT",
            "CREATE_REPLICATION_SLOT s PHYSICAL (TWO_PHASE)",
            "CREATE_REPLICATION_SLOT s PHYSICAL (failover)",
            "CREATE_REPLICATION_SLOT s LOGICAL p RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s LOGICAL p (snapshot 'use', snapshot 'use')",
        ] {
            assert_eq!(err(q), conflict, "{q}");
        }
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL maybe)"),
            ("reserve_wal requires a Boolean value".into(), "42601")
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 2)"),
            ("reserve_wal requires a Boolean value".into(), "42601")
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s LOGICAL p (SNAPSHOT)"),
            ("snapshot requires a parameter".into(), "42601")
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s LOGICAL p (SNAPSHOT 'x')"),
            (
                "unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": \"x\"".into(),
                "22023"
            )
        );
        assert_eq!(
            err("CREATE_REPLICATION_SLOT s PHYSICAL (bogus)"),
            ("unrecognized option: bogus".into(), "XX000")
        );
        for q in [
            "CREATE_REPLICATION_SLOT s",
            "CREATE_REPLICATION_SLOT PHYSICAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL TEMPORARY",
            "CREATE_REPLICATION_SLOT s LOGICAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL) RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL ()",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 0/0)",
            "CREATE_REPLICATION_SLOT 's' PHYSICAL",
            // Syntax errors come before option checks, as in PostgreSQL.
            "CREATE_REPLICATION_SLOT s PHYSICAL (bogus) x",
        ] {
            assert_eq!(err(q), ("syntax error".into(), "42601"), "{q}");
        }
    }

    #[test]
    fn lexing_details() {
        // Unquoted identifiers are downcased and truncated to 63 bytes; quoted keep case.
        let long = "A".repeat(70);
        assert_eq!(ok(&format!("SHOW {long}")), C::Show("a".repeat(63)));
        let multi = format!("{}é", "x".repeat(62));
        assert_eq!(ok(&format!("SHOW \"{multi}\"")), C::Show("x".repeat(62)));
        assert_eq!(ok("SHOW ÄbC$1"), C::Show("Äbc$1".into()));
        assert_eq!(ok("SHOW \"\""), C::Show(String::new()));
        assert_eq!(ok("\tSHOW\r\n\x0bx\x0c"), C::Show("x".into()));
        // Keywords are upper-case only; a keyword is not an identifier.
        assert_eq!(ok("SHOW show"), C::Show("show".into()));
        assert_eq!(err("SHOW SHOW"), ("syntax error".into(), "42601"));
        assert_eq!(err("SHOW"), ("syntax error".into(), "42601"));
        assert_eq!(err("SHOW a."), ("syntax error".into(), "42601"));
        assert_eq!(err("SHOW 'x'"), ("syntax error".into(), "42601"));
        // Timelines: decimal, > 0, C truncation of huge values.
        assert_eq!(
            ok("TIMELINE_HISTORY 4294967295"),
            C::TimelineHistory(u32::MAX)
        );
        assert_eq!(
            err("TIMELINE_HISTORY 0"),
            ("invalid timeline 0".into(), "42601")
        );
        assert_eq!(
            err("TIMELINE_HISTORY 4294967296"),
            ("invalid timeline 0".into(), "42601")
        );
        assert_eq!(err("TIMELINE_HISTORY -1"), ("syntax error".into(), "42601"));
        assert_eq!(err("TIMELINE_HISTORY"), ("syntax error".into(), "42601"));
        // Unterminated quotes; but a syntax error that comes first wins.
        let unterminated = ("unterminated quoted string".to_string(), "42601");
        assert_eq!(err("SHOW \"abc"), unterminated);
        assert_eq!(err("SHOW abc 'x"), unterminated);
        assert_eq!(err("'abc"), unterminated);
        assert_eq!(
            err("IDENTIFY_SYSTEM x 'abc"),
            ("syntax error".into(), "42601")
        );
        assert_eq!(
            err("TIMELINE_HISTORY 0 'abc"),
            ("invalid timeline 0".into(), "42601")
        );
        assert_eq!(err("IDENTIFY_SYSTEM\0"), ("syntax error".into(), "42601"));
        // A hex-looking word followed by '/' is an LSN.
        assert_eq!(
            ok("START_REPLICATION DEAD/BEEF"),
            start(None, 0xDEAD_0000_BEEF, None)
        );
    }

    fn bb(q: &str) -> BaseBackupOptions {
        match ok(q) {
            C::BaseBackup(o) => o,
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn base_backup_new_syntax() {
        // What pg_basebackup 15–18 sends for `-X stream -R --manifest-checksums=SHA256 -r 32k -P`.
        let o = bb("BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MAX_RATE 32,  MANIFEST 'yes',  MANIFEST_CHECKSUMS 'SHA256',  TARGET 'client')");
        assert_eq!(
            o,
            BaseBackupOptions {
                legacy_syntax: false,
                label: "pg_basebackup base backup".into(),
                progress: true,
                fast_checkpoint: true,
                wait: false,
                max_rate: 32,
                manifest: ManifestOption::Yes,
                manifest_checksums: "SHA256".into(),
                target: Some("client".into()),
                ..BaseBackupOptions::default()
            }
        );
        let o = bb("BASE_BACKUP (MANIFEST 'force-encode', TABLESPACE_MAP, WAL, VERIFY_CHECKSUMS false, INCREMENTAL, COMPRESSION 'LZ4', COMPRESSION_DETAIL 'level=1');");
        assert_eq!(o.manifest, ManifestOption::ForceEncode);
        assert_eq!(o.manifest_checksums, "CRC32C");
        assert!(o.tablespace_map && o.wal && o.incremental && !o.verify_checksums);
        assert_eq!(o.compression.as_deref(), Some("lz4"));
        assert_eq!(o.label, "base backup");
        assert!(o.wait);
        assert_eq!(
            bb("BASE_BACKUP (manifest 'n')").manifest,
            ManifestOption::No
        );
        assert_eq!(
            bb("BASE_BACKUP (manifest 'on')").manifest,
            ManifestOption::Yes
        );
    }

    #[test]
    fn base_backup_legacy_syntax() {
        let o = bb("BASE_BACKUP LABEL 'old' PROGRESS FAST WAL NOWAIT MAX_RATE 1024 TABLESPACE_MAP NOVERIFY_CHECKSUMS MANIFEST 'yes' MANIFEST_CHECKSUMS 'sha512'");
        assert_eq!(
            o,
            BaseBackupOptions {
                legacy_syntax: true,
                label: "old".into(),
                progress: true,
                fast_checkpoint: true,
                wal: true,
                wait: false,
                max_rate: 1024,
                tablespace_map: true,
                verify_checksums: false,
                manifest: ManifestOption::Yes,
                manifest_checksums: "SHA512".into(),
                ..BaseBackupOptions::default()
            }
        );
        assert_eq!(
            err("BASE_BACKUP LABEL old"),
            ("syntax error".into(), "42601")
        );
        assert_eq!(err("BASE_BACKUP FAST x"), ("syntax error".into(), "42601"));
        assert_eq!(
            err("BASE_BACKUP FAST FAST"),
            ("duplicate option \"checkpoint\"".into(), "42601")
        );
    }

    #[test]
    fn base_backup_errors() {
        for (q, msg, code) in [
            (
                "BASE_BACKUP (LABEL 'a', LABEL 'b')",
                "duplicate option \"label\"",
                "42601",
            ),
            (
                "BASE_BACKUP (CHECKPOINT 'slow')",
                "unrecognized checkpoint type: \"slow\"",
                "42601",
            ),
            (
                "BASE_BACKUP (MAX_RATE 31)",
                "31 is outside the valid range for parameter \"MAX_RATE\" (32 .. 1048576)",
                "22003",
            ),
            (
                "BASE_BACKUP (MAX_RATE 1048577)",
                "1048577 is outside the valid range for parameter \"MAX_RATE\" (32 .. 1048576)",
                "22003",
            ),
            (
                "BASE_BACKUP (MAX_RATE 'x')",
                "max_rate requires an integer value",
                "42601",
            ),
            (
                "BASE_BACKUP (MANIFEST 'maybe')",
                "unrecognized manifest option: \"maybe\"",
                "42601",
            ),
            (
                "BASE_BACKUP (MANIFEST 'yes', MANIFEST_CHECKSUMS 'md5')",
                "unrecognized checksum algorithm: \"md5\"",
                "42601",
            ),
            (
                "BASE_BACKUP (MANIFEST_CHECKSUMS 'SHA256')",
                "manifest checksums require a backup manifest",
                "42601",
            ),
            (
                "BASE_BACKUP (TARGET_DETAIL 'x')",
                "target detail cannot be used without target",
                "42601",
            ),
            (
                "BASE_BACKUP (TARGET 'client', TARGET_DETAIL 'x')",
                "target \"client\" does not accept a target detail",
                "42601",
            ),
            (
                "BASE_BACKUP (COMPRESSION 'brotli')",
                "unrecognized compression algorithm: \"brotli\"",
                "42601",
            ),
            (
                "BASE_BACKUP (COMPRESSION_DETAIL '1')",
                "compression detail cannot be specified unless compression is enabled",
                "42601",
            ),
            (
                "BASE_BACKUP (FOO)",
                "unrecognized base backup option: \"foo\"",
                "42601",
            ),
            (
                "BASE_BACKUP (PROGRESS 'maybe')",
                "progress requires a Boolean value",
                "42601",
            ),
            ("BASE_BACKUP (LABEL)", "label requires a parameter", "42601"),
            ("BASE_BACKUP (LABEL 'x'", "syntax error", "42601"),
            ("BASE_BACKUP (LABEL 'x') FAST", "syntax error", "42601"),
        ] {
            assert_eq!(err(q), (msg.to_string(), code), "{q}");
        }
    }

    #[test]
    fn random_never_panics() {
        let mut rng = XorShift(0xc0ffee);
        let pieces = [
            "START_REPLICATION",
            "SLOT",
            "LOGICAL",
            "PHYSICAL",
            "TIMELINE",
            "CREATE_REPLICATION_SLOT",
            "SHOW",
            "TIMELINE_HISTORY",
            "DROP_REPLICATION_SLOT",
            "RESERVE_WAL",
            "(",
            ")",
            ",",
            ";",
            ".",
            "'",
            "\"",
            "0/0",
            "AB/CD",
            "123",
            "99999999999999999999999",
            "x",
            "é",
            " ",
            "BASE_BACKUP",
            "ALTER_REPLICATION_SLOT",
            "READ_REPLICATION_SLOT",
            "TEMPORARY",
            "EXPORT_SNAPSHOT",
            "TWO_PHASE",
            "WAIT",
            "''",
            "\"\"",
            "\0",
            "/",
        ];
        for i in 0..20000 {
            let q = if i % 2 == 0 {
                (0..rng.below(8))
                    .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join(if rng.below(2) == 0 { " " } else { "" })
            } else {
                String::from_utf8_lossy(&rng.bytes(24)).into_owned()
            };
            let _ = parse_command(&q);
        }
    }
}
