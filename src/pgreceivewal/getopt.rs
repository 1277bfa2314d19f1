//! A `getopt_long` work-alike (GNU libc's behaviour, which PostgreSQL's tools get on Linux).
//!
//! Owns: splitting an argument vector into options and operands exactly as glibc's
//! `getopt_long` does with PostgreSQL's option tables: clustered short options (`-nv`),
//! attached or separate arguments (`-Dfoo`, `-D foo`, `--directory=foo`, `--directory foo`),
//! unambiguous prefixes of long options (`--dir`), argument permutation (operands may come
//! anywhere, `--` ends the options) and glibc's diagnostics, prefixed with `argv[0]`.
//!
//! Must not: interpret option values or print anything (the caller prints the diagnostic).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

/// One long option: its name, whether it takes an argument, and the key it yields.
#[derive(Debug, Clone, Copy)]
pub struct LongOpt<K> {
    pub name: &'static str,
    pub has_arg: bool,
    pub key: K,
}

/// One parsed option: its key and its argument (for options that take one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt<K> {
    pub key: K,
    pub arg: Option<String>,
}

/// The result of a successful parse: options in command-line order, then the operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<K> {
    pub opts: Vec<Opt<K>>,
    pub operands: Vec<String>,
}

/// A diagnostic as glibc prints it (without the trailing newline), e.g.
/// `pg_receivewal: unrecognized option '--foo'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GetoptError(pub String);

/// Parses `args` (without `argv[0]`). `short` is the optstring (`"d:D:n"`: a letter followed
/// by `:` takes an argument); `short_key` maps a short option letter to its key. `argv0`
/// prefixes diagnostics, as glibc does.
pub fn parse<K: Copy + PartialEq>(
    argv0: &str,
    args: &[String],
    short: &str,
    short_key: impl Fn(char) -> K,
    long: &[LongOpt<K>],
) -> Result<Parsed<K>, GetoptError> {
    let takes_arg = |c: char| -> Option<bool> {
        let mut it = short.chars().peekable();
        while let Some(x) = it.next() {
            let has = it.peek() == Some(&':');
            if has {
                it.next();
            }
            if x == c && c != ':' {
                return Some(has);
            }
        }
        None
    };
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0usize;
    while let Some(a) = args.get(i) {
        i = i.saturating_add(1);
        if a == "--" {
            operands.extend(args.get(i..).unwrap_or_default().iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let opt = find_long(argv0, name, long)?;
            let arg = if opt.has_arg {
                match inline {
                    Some(v) => Some(v),
                    None if i < args.len() => {
                        let v = args.get(i).cloned();
                        i = i.saturating_add(1);
                        v
                    }
                    None => {
                        return Err(GetoptError(format!(
                            "{argv0}: option '--{}' requires an argument",
                            opt.name
                        )))
                    }
                }
            } else if inline.is_some() {
                return Err(GetoptError(format!(
                    "{argv0}: option '--{}' doesn't allow an argument",
                    opt.name
                )));
            } else {
                None
            };
            opts.push(Opt { key: opt.key, arg });
            continue;
        }
        if a.len() < 2 || !a.starts_with('-') {
            operands.push(a.clone());
            continue;
        }
        // `a` starts with the one-byte '-'.
        let cluster: Vec<char> = a.get(1..).unwrap_or("").chars().collect();
        let mut j = 0usize;
        while let Some(&c) = cluster.get(j) {
            j = j.saturating_add(1);
            match takes_arg(c) {
                None => return Err(GetoptError(format!("{argv0}: invalid option -- '{c}'"))),
                Some(false) => opts.push(Opt {
                    key: short_key(c),
                    arg: None,
                }),
                Some(true) => {
                    let arg = if j < cluster.len() {
                        cluster.get(j..).unwrap_or_default().iter().collect()
                    } else if let Some(v) = args.get(i) {
                        i = i.saturating_add(1);
                        v.clone()
                    } else {
                        return Err(GetoptError(format!(
                            "{argv0}: option requires an argument -- '{c}'"
                        )));
                    };
                    opts.push(Opt {
                        key: short_key(c),
                        arg: Some(arg),
                    });
                    break;
                }
            }
        }
    }
    Ok(Parsed { opts, operands })
}

/// An exact name wins; else a unique prefix; prefixes of several options are ambiguous
/// unless all of them mean the same (same key and argument), as in glibc.
fn find_long<'a, K: Copy + PartialEq>(
    argv0: &str,
    name: &str,
    long: &'a [LongOpt<K>],
) -> Result<&'a LongOpt<K>, GetoptError> {
    if let Some(o) = long.iter().find(|o| o.name == name) {
        return Ok(o);
    }
    let cands: Vec<&LongOpt<K>> = if name.is_empty() {
        Vec::new()
    } else {
        long.iter().filter(|o| o.name.starts_with(name)).collect()
    };
    match cands.as_slice() {
        [] => Err(GetoptError(format!(
            "{argv0}: unrecognized option '--{name}'"
        ))),
        [first, rest @ ..]
            if rest
                .iter()
                .all(|o| o.key == first.key && o.has_arg == first.has_arg) =>
        {
            Ok(first)
        }
        _ => {
            let list: String = cands.iter().map(|o| format!(" '--{}'", o.name)).collect();
            Err(GetoptError(format!(
                "{argv0}: option '--{name}' is ambiguous; possibilities:{list}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &[LongOpt<char>] = &[
        LongOpt {
            name: "directory",
            has_arg: true,
            key: 'D',
        },
        LongOpt {
            name: "no-loop",
            has_arg: false,
            key: 'n',
        },
        LongOpt {
            name: "no-password",
            has_arg: false,
            key: 'w',
        },
        LongOpt {
            name: "no-sync",
            has_arg: false,
            key: '5',
        },
        LongOpt {
            name: "slot",
            has_arg: true,
            key: 'S',
        },
        LongOpt {
            name: "synchronous",
            has_arg: false,
            key: '4',
        },
    ];

    fn p(args: &[&str]) -> Result<Parsed<char>, GetoptError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse("prog", &args, "D:nS:vw", |c| c, LONG)
    }

    fn o(key: char, arg: Option<&str>) -> Opt<char> {
        Opt {
            key,
            arg: arg.map(str::to_string),
        }
    }

    #[test]
    fn short_options_clustered_attached_and_separate() {
        let r = p(&["-nvDdir", "-S", "s1", "-vD", "d2"]).unwrap();
        assert_eq!(
            r.opts,
            vec![
                o('n', None),
                o('v', None),
                o('D', Some("dir")),
                o('S', Some("s1")),
                o('v', None),
                o('D', Some("d2")),
            ]
        );
        assert!(r.operands.is_empty());
    }

    #[test]
    fn long_options_inline_separate_and_prefixes() {
        let r = p(&[
            "--directory=/x",
            "--slot",
            "a",
            "--dir",
            "/y",
            "--syn",
            "--no-l",
        ])
        .unwrap();
        assert_eq!(
            r.opts,
            vec![
                o('D', Some("/x")),
                o('S', Some("a")),
                o('D', Some("/y")),
                o('4', None),
                o('n', None),
            ]
        );
        // an empty inline value is a value
        assert_eq!(p(&["--slot="]).unwrap().opts, vec![o('S', Some(""))]);
    }

    #[test]
    fn operands_are_permuted_and_double_dash_ends_options() {
        let r = p(&["extra", "-n", "--", "-v", "more"]).unwrap();
        assert_eq!(r.opts, vec![o('n', None)]);
        assert_eq!(r.operands, vec!["extra", "-v", "more"]);
        // a lone "-" is an operand
        assert_eq!(p(&["-"]).unwrap().operands, vec!["-"]);
    }

    #[test]
    fn glibc_diagnostics() {
        let e = |args: &[&str]| p(args).unwrap_err().0;
        assert_eq!(
            e(&["--not-a-valid-option"]),
            "prog: unrecognized option '--not-a-valid-option'"
        );
        assert_eq!(e(&["-x"]), "prog: invalid option -- 'x'");
        assert_eq!(e(&["-?"]), "prog: invalid option -- '?'");
        assert_eq!(e(&["-D"]), "prog: option requires an argument -- 'D'");
        assert_eq!(
            e(&["--directory"]),
            "prog: option '--directory' requires an argument"
        );
        assert_eq!(
            e(&["--no-loop=1"]),
            "prog: option '--no-loop' doesn't allow an argument"
        );
        assert_eq!(
            e(&["--no"]),
            "prog: option '--no' is ambiguous; possibilities: '--no-loop' '--no-password' '--no-sync'"
        );
        assert_eq!(
            e(&["--s"]),
            "prog: option '--s' is ambiguous; possibilities: '--slot' '--synchronous'"
        );
    }
}
