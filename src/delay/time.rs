//! PostgreSQL timestamps (`TimestampTz`, µs since 2000-01-01 UTC) as text, with `chrono`.
//!
//! Owns: formatting as `2026-11-21 18:58:59.078718+00` (UTC, like `psql` with
//! `TimeZone=UTC`) and parsing the forms an operator types for `--to-time`/`--since`:
//! `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]` with an optional `Z`, `+HH`, `+HHMM`, `+HH:MM` or
//! `-HH:MM` suffix (no suffix means UTC), `YYYY-MM-DD` alone, `@<unix seconds>`, and `now`,
//! `now-10m`, `-10m` (relative to now; durations as in [`crate::config::parse_duration`]).
//! Must not: do IO (the current time is passed in).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};

use crate::config::parse_duration;

const USECS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_USECS: i64 = PG_EPOCH_DAYS * SECS_PER_DAY * USECS_PER_SEC;

/// Formats a `TimestampTz` as `YYYY-MM-DD HH:MM:SS.ffffff+00` (times beyond chrono's
/// ±262,000 years as a plain microsecond count).
pub fn format_pg_time(t: i64) -> String {
    match t
        .checked_add(PG_EPOCH_USECS)
        .and_then(DateTime::from_timestamp_micros)
    {
        Some(d) => d.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        None => format!("{t} µs after 2000-01-01 00:00:00+00"),
    }
}

/// Error for a timestamp that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time \"{0}\": use YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]|Z], @UNIX_SECONDS, or now-DURATION")]
pub struct ParseTimeError(pub String);

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an operator-supplied time into a `TimestampTz`; `now` is the current time.
pub fn parse_pg_time(text: &str, now: i64) -> Result<i64, ParseTimeError> {
    let err = || ParseTimeError(text.to_string());
    let s = text.trim();
    if let Some(unix) = s.strip_prefix('@') {
        let secs: i64 = unix.trim().parse().map_err(|_| err())?;
        return secs
            .checked_sub(PG_EPOCH_DAYS * SECS_PER_DAY)
            .and_then(|v| v.checked_mul(USECS_PER_SEC))
            .ok_or_else(err);
    }
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        let d = parse_duration(rel).map_err(|_| err())?;
        let us = i64::try_from(d.as_micros()).map_err(|_| err())?;
        return now.checked_sub(us).ok_or_else(err);
    }
    parse_absolute(s).ok_or_else(err)
}

/// The zone suffix of the time part as seconds east of UTC; `s` starts with the 10-byte date.
fn split_zone(s: &str) -> Option<(&str, i64)> {
    let rest = s.get(10..)?;
    let Some(p) = rest.find(['Z', 'z', '+', '-']) else {
        return Some((s, 0));
    };
    let local = s.get(..10usize.checked_add(p)?)?;
    let zone = rest.get(p..)?.trim();
    if zone.eq_ignore_ascii_case("z") {
        return Some((local, 0));
    }
    let sign: i64 = if zone.starts_with('-') { -1 } else { 1 };
    let z = zone.get(1..)?;
    let (zh, zm) = match z.split_once(':') {
        Some((a, b)) => (num::<i64>(a)?, num::<i64>(b)?),
        None if z.len() == 4 => (num::<i64>(z.get(..2)?)?, num::<i64>(z.get(2..)?)?),
        None => (num::<i64>(z)?, 0),
    };
    if zh > 15 || zm > 59 {
        return None;
    }
    let secs = zh.checked_mul(3600)?.checked_add(zm.checked_mul(60)?)?;
    Some((local, sign.checked_mul(secs)?))
}

fn parse_absolute(s: &str) -> Option<i64> {
    let (local, offset_secs) = split_zone(s)?;
    let local = local.trim().replacen('T', " ", 1);
    let naive = match NaiveDate::parse_from_str(&local, "%Y-%m-%d") {
        Ok(d) => d.and_time(NaiveTime::MIN),
        Err(_) => NaiveDateTime::parse_from_str(&local, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(&local, "%Y-%m-%d %H:%M"))
            .ok()?,
    };
    naive
        .and_utc()
        .timestamp_micros()
        .checked_sub(offset_secs.checked_mul(USECS_PER_SEC)?)?
        .checked_sub(PG_EPOCH_USECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forms() {
        assert_eq!(format_pg_time(0), "2000-01-01 00:00:00.000000+00");
        let t = parse_pg_time("2026-11-21 18:58:59.078718", 0).unwrap();
        assert_eq!(format_pg_time(t), "2026-11-21 18:58:59.078718+00");
        assert_eq!(parse_pg_time("2026-11-21T18:58:59.078718Z", 0).unwrap(), t);
        assert_eq!(
            parse_pg_time("2026-11-21 20:58:59.078718+02", 0).unwrap(),
            t
        );
        assert_eq!(
            parse_pg_time("2026-11-21 17:28:59.078718-01:30", 0).unwrap(),
            t
        );
        assert_eq!(
            format_pg_time(parse_pg_time("1999-12-31 23:59:59.5", 0).unwrap()),
            "1999-12-31 23:59:59.500000+00"
        );
        assert_eq!(
            format_pg_time(parse_pg_time("2024-02-29", 0).unwrap()),
            "2024-02-29 00:00:00.000000+00"
        );
        assert_eq!(parse_pg_time("@946684800", 0).unwrap(), 0);
        assert_eq!(parse_pg_time("now", 42).unwrap(), 42);
        assert_eq!(parse_pg_time("now-1s", 5_000_000).unwrap(), 4_000_000);
        assert_eq!(parse_pg_time("-10m", 600_000_000).unwrap(), 0);
        for bad in [
            "",
            "x",
            "2026-13-01",
            "2026-11-21 25:00",
            "2026-11-21 10:00:00.",
            "@x",
            "2026-11-21 10:00+99",
        ] {
            assert!(parse_pg_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn never_panics() {
        for s in [
            "2026-11-21 ",
            "2026-11-2",
            "9999999999-01-01",
            "2026-11-21 1:2:3.1234567891",
            "ééééééééééé",
            "2026-11-21+",
            "@-99999999999999999",
        ] {
            let _ = parse_pg_time(s, i64::MAX);
        }
        // regression: `GET /xacts?since=now-99999999999999999999d` panicked in the
        // duration parser
        for s in [
            "now-99999999999999999999d",
            "-99999999999999999999d",
            "now-9999999999999d",
        ] {
            assert!(parse_pg_time(s, 0).is_err(), "{s}");
        }
        let _ = format_pg_time(i64::MIN);
        let _ = format_pg_time(i64::MAX);
    }
}
