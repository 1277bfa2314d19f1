//! Timeline history files (`NNNNNNNN.history`), parsed with the rules of PostgreSQL's
//! `readTimeLineHistory` (timeline.c), and lookups over the parsed entries.
//!
//! Owns: the history-file grammar. Must not: read files (callers pass the text) or rewrite
//! the bytes (history files are served verbatim).

use super::WalError;
use crate::lsn::{Lsn, TimelineId};

/// One line of a history file: timeline `parent_tli` ended at `switchpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent_tli: TimelineId,
    /// The first LSN that is not on `parent_tli` any more.
    pub switchpoint: Lsn,
    /// Free text after the switchpoint (the reason PostgreSQL wrote), trimmed.
    pub reason: String,
}

fn skip_ws(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_ascii_whitespace())
}

/// `sscanf`'s `%u`/`%X`-like: leading digits of the given radix (at most 32 bits).
fn take_num(s: &str, radix: u32) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let v = u32::from_str_radix(s.get(..end)?, radix).ok()?;
    Some((v, s.get(end..)?))
}

/// Parses a history file as `readTimeLineHistory` does: blank lines and lines whose first
/// non-blank character is `#` are skipped; every other line must read
/// `parentTLI <whitespace> XXXXXXXX/XXXXXXXX`, the rest of the line being the reason;
/// parent timeline ids must be strictly increasing. Entries are returned oldest first.
///
/// Not checked here (the caller knows the file's own timeline): that every parent is below
/// the timeline the file belongs to; see [`check_history_for`].
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, WalError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for raw in text.split('\n') {
        let line = skip_ws(raw);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let shown = raw.trim_end_matches(['\r', '\n']).to_string();
        let (tli, rest) = take_num(line, 10).ok_or_else(|| WalError::HistorySyntax {
            line: shown.clone(),
            hint: "Expected a numeric timeline ID.",
        })?;
        let bad_lsn = || WalError::HistorySyntax {
            line: shown.clone(),
            hint: "Expected a write-ahead log switchpoint location.",
        };
        let rest = skip_ws(rest);
        let (hi, rest) = take_num(rest, 16).ok_or_else(bad_lsn)?;
        let rest = rest.strip_prefix('/').ok_or_else(bad_lsn)?;
        let (lo, rest) = take_num(skip_ws(rest), 16).ok_or_else(bad_lsn)?;
        if let Some(last) = out.last() {
            if tli <= last.parent_tli {
                return Err(WalError::HistoryOrder { line: shown });
            }
        }
        out.push(HistoryEntry {
            parent_tli: tli,
            switchpoint: Lsn((u64::from(hi) << 32) | u64::from(lo)),
            reason: rest.trim().to_string(),
        });
    }
    Ok(out)
}

/// The check `readTimeLineHistory` makes against the file's own timeline: every parent
/// must be below `tli`.
pub fn check_history_for(entries: &[HistoryEntry], tli: TimelineId) -> Result<(), WalError> {
    match entries.last() {
        Some(e) if e.parent_tli >= tli => Err(WalError::HistoryOrder {
            line: format!(
                "{}\t{}\t{} (Timeline IDs must be less than child timeline's ID {tli}.)",
                e.parent_tli, e.switchpoint, e.reason
            ),
        }),
        _ => Ok(()),
    }
}

/// Where timeline `tli` ended (`tliSwitchPoint`), or `None` if the history does not list it
/// (it is the current timeline, or unknown).
pub fn switch_point_of(entries: &[HistoryEntry], tli: TimelineId) -> Option<Lsn> {
    entries
        .iter()
        .find(|e| e.parent_tli == tli)
        .map(|e| e.switchpoint)
}

/// The timeline that `lsn` belongs to (`tliOfPointInHistory`): the first listed timeline
/// whose switchpoint lies beyond `lsn`, else `current_tli`. A switchpoint itself belongs to
/// the newer timeline.
pub fn tli_of_lsn(entries: &[HistoryEntry], current_tli: TimelineId, lsn: Lsn) -> TimelineId {
    entries
        .iter()
        .find(|e| lsn < e.switchpoint)
        .map_or(current_tli, |e| e.parent_tli)
}

/// Checks a history file received for timeline `tli` (from `TIMELINE_HISTORY`) before it is
/// stored, and returns its entries. Beyond [`parse_history`]'s syntax and strictly
/// increasing parent timelines (`readTimeLineHistory`), the file must be a possible history
/// of `tli`:
/// - `name` is `history_file_name(tli)` (the name names the content's timeline);
/// - the text is UTF-8 and, for `tli > 1`, has at least one entry (PostgreSQL writes a
///   history file only when a timeline is created from a parent);
/// - every parent is below `tli` (`readTimeLineHistory`'s "Timeline IDs must be less than
///   child timeline's ID"). The last parent is *not* required to be `tli - 1`: a promotion
///   picks `findNewestTimeLine() + 1`, which skips timelines other servers created in the
///   archive, so `00000004.history` may end with parent 2;
/// - switch points are valid and never decrease (a child timeline starts where its parent
///   ended, so a later fork cannot be earlier on the WAL).
pub fn validate_history(
    tli: TimelineId,
    name: &str,
    content: &[u8],
) -> Result<Vec<HistoryEntry>, WalError> {
    let expected = crate::lsn::history_file_name(tli);
    let invalid = |reason: String| WalError::HistoryInvalid {
        file: name.to_string(),
        reason,
    };
    if name != expected {
        return Err(invalid(format!(
            "the file for timeline {tli} must be named \"{expected}\""
        )));
    }
    let text = std::str::from_utf8(content).map_err(|e| invalid(format!("not valid text: {e}")))?;
    let entries = parse_history(text)?;
    check_history_for(&entries, tli)?;
    if tli > 1 && entries.is_empty() {
        return Err(invalid(format!(
            "it lists no parent timeline, but timeline {tli} must have forked from one"
        )));
    }
    let mut prev = Lsn::INVALID;
    for e in &entries {
        if !e.switchpoint.is_valid() {
            return Err(invalid(format!(
                "timeline {} has an invalid switch point {}",
                e.parent_tli, e.switchpoint
            )));
        }
        if e.switchpoint < prev {
            return Err(invalid(format!(
                "timeline {} ends at {}, before its parent's switch point {prev}",
                e.parent_tli, e.switchpoint
            )));
        }
        prev = e.switchpoint;
    }
    Ok(entries)
}

/// Checks that `ours` (the history walrelay stored for one of its timelines) is the start
/// of `theirs` (a server's history): the same parents with the same switch points, in
/// order. Reasons (free text) are not compared. A mismatch means the server's timeline of
/// that number is not the one walrelay holds WAL of (two servers promoted to the same
/// timeline ID): following it would mix two histories.
pub fn check_prefix(ours: &[HistoryEntry], theirs: &[HistoryEntry]) -> Result<(), String> {
    for (i, o) in ours.iter().enumerate() {
        match theirs.get(i) {
            Some(t) if t.parent_tli == o.parent_tli && t.switchpoint == o.switchpoint => {}
            Some(t) => {
                return Err(format!(
                    "walrelay's history has timeline {} ending at {}, the server's has timeline {} ending at {}",
                    o.parent_tli, o.switchpoint, t.parent_tli, t.switchpoint
                ))
            }
            None => {
                return Err(format!(
                    "walrelay's history has timeline {} ending at {}, the server's history ends before it",
                    o.parent_tli, o.switchpoint
                ))
            }
        }
    }
    Ok(())
}

/// The timeline that follows `tli` in a history whose current timeline is `cur`: the parent
/// of the next entry, else `cur` (`tliSwitchPoint`'s `nextTLI`).
pub fn next_tli(entries: &[HistoryEntry], tli: TimelineId, cur: TimelineId) -> TimelineId {
    let mut it = entries.iter().skip_while(|e| e.parent_tli != tli);
    it.next();
    it.next().map_or(cur, |e| e.parent_tli)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H3: &str = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000028\tbefore 2000-01-01 00:00:00+00\n";

    #[test]
    fn parses_real_format() {
        let e = parse_history(H3).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].parent_tli, 1);
        assert_eq!(e[0].switchpoint, Lsn(0x300_0000));
        assert_eq!(e[0].reason, "no recovery target specified");
        assert_eq!(e[1].switchpoint, Lsn(0x500_0028));
        assert_eq!(switch_point_of(&e, 1), Some(Lsn(0x300_0000)));
        assert_eq!(switch_point_of(&e, 2), Some(Lsn(0x500_0028)));
        assert_eq!(switch_point_of(&e, 3), None);
        assert_eq!(tli_of_lsn(&e, 3, Lsn(0x2FF_FFFF)), 1);
        assert_eq!(tli_of_lsn(&e, 3, Lsn(0x300_0000)), 2);
        assert_eq!(tli_of_lsn(&e, 3, Lsn(0x500_0027)), 2);
        assert_eq!(tli_of_lsn(&e, 3, Lsn(0x500_0028)), 3);
        assert_eq!(tli_of_lsn(&[], 1, Lsn(5)), 1);
        assert!(check_history_for(&e, 3).is_ok());
        assert!(check_history_for(&e, 2).is_err());
    }

    #[test]
    fn comments_blank_and_loose_whitespace() {
        let t = "# comment\n   \n  # indented comment\r\n 1 0/10 reason x\r\n2\t1/A\n\n";
        let e = parse_history(t).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].switchpoint, Lsn(0x10));
        assert_eq!(e[0].reason, "reason x");
        assert_eq!(e[1].switchpoint, Lsn(0x1_0000_000A));
        assert_eq!(e[1].reason, "");
        assert!(parse_history("").unwrap().is_empty());
    }

    #[test]
    fn errors() {
        let e = parse_history("x\t0/1\n").unwrap_err().to_string();
        assert!(e.contains("Expected a numeric timeline ID"), "{e}");
        for bad in ["1\n", "1\t0\n", "1\t0/\n", "1\tZ/1\n", "1\t123456789/0\n"] {
            let e = parse_history(bad).unwrap_err().to_string();
            assert!(e.contains("switchpoint location"), "{bad:?}: {e}");
        }
        let e = parse_history("2\t0/1\n2\t0/2\n").unwrap_err().to_string();
        assert!(e.contains("increasing sequence"), "{e}");
        assert!(parse_history("99999999999\t0/1").is_err());
    }

    #[test]
    fn validates_received_files() {
        let e = validate_history(3, "00000003.history", H3.as_bytes()).unwrap();
        assert_eq!(e.len(), 2);
        // a timeline skipped (findNewestTimeLine + 1) is fine
        assert!(validate_history(4, "00000004.history", H3.as_bytes()).is_ok());
        let err = |tli, name: &str, text: &[u8]| {
            validate_history(tli, name, text).unwrap_err().to_string()
        };
        let e = err(3, "00000004.history", H3.as_bytes());
        assert!(e.contains("must be named \"00000003.history\""), "{e}");
        let e = err(2, "00000002.history", H3.as_bytes());
        assert!(e.contains("less than child timeline's ID 2"), "{e}");
        let e = err(2, "00000002.history", b"# nothing\n");
        assert!(e.contains("lists no parent timeline"), "{e}");
        let e = err(3, "00000003.history", b"1\t0/5000000\tx\n2\t0/4000000\ty\n");
        assert!(
            e.contains("timeline 2 ends at 0/4000000, before its parent's switch point 0/5000000"),
            "{e}"
        );
        let e = err(2, "00000002.history", b"1\t0/0\tx\n");
        assert!(e.contains("invalid switch point"), "{e}");
        let e = err(2, "00000002.history", b"1\t0/30\xff\n");
        assert!(e.contains("not valid text"), "{e}");
        let e = err(3, "00000003.history", b"2\t0/1\n1\t0/2\n");
        assert!(e.contains("increasing sequence"), "{e}");
        // timeline 1 has no history; an empty file for it is not an error of the grammar
        assert!(validate_history(1, "00000001.history", b"")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn prefix_and_next() {
        let h2 = parse_history("1\t0/3000000\tx\n").unwrap();
        let h3 = parse_history(H3).unwrap();
        assert!(check_prefix(&h2, &h3).is_ok());
        assert!(check_prefix(&[], &h3).is_ok());
        let other = parse_history("1\t0/3000010\tx\n").unwrap();
        let e = check_prefix(&other, &h3).unwrap_err();
        assert!(e.contains("timeline 1 ending at 0/3000010"), "{e}");
        assert!(check_prefix(&h3, &h2).is_err());
        assert_eq!(next_tli(&h3, 1, 3), 2);
        assert_eq!(next_tli(&h3, 2, 3), 3);
        let skip = parse_history("1\t0/10\n3\t0/20\n").unwrap();
        assert_eq!(next_tli(&skip, 1, 5), 3);
        assert_eq!(next_tli(&skip, 3, 5), 5);
    }
}
