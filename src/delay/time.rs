//! PostgreSQL timestamps (`TimestampTz`, µs since 2000-01-01 UTC) as text, without a
//! calendar dependency.
//!
//! Owns: formatting as `2026-11-21 18:58:59.078718+00` (UTC, like `psql` with
//! `TimeZone=UTC`) and parsing the forms an operator types for `--to-time`/`--since`:
//! `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]` with an optional `Z`, `+HH`, `+HH:MM` or `-HH:MM`
//! suffix (no suffix means UTC), `YYYY-MM-DD` alone, `@<unix seconds>`, and `now`, `now-10m`,
//! `-10m` (relative to now). Must not: do IO (the current time is passed in).

use crate::config::parse_duration;

const USECS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats a `TimestampTz` as `YYYY-MM-DD HH:MM:SS.ffffff+00`.
pub fn format_pg_time(t: i64) -> String {
    let secs = t.div_euclid(USECS_PER_SEC);
    let us = t.rem_euclid(USECS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY) + PG_EPOCH_DAYS;
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{us:06}+00",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
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

fn parse_absolute(s: &str) -> Option<i64> {
    let date = s.get(..10)?;
    let rest = s.get(10..)?;
    let mut dp = date.split('-');
    let y: i64 = num(dp.next()?)?;
    let m: u32 = num(dp.next()?)?;
    let d: u32 = num(dp.next()?)?;
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs_of_day = 0i64;
    let mut us = 0i64;
    let mut offset_secs = 0i64;
    let rest = rest.trim_start_matches([' ', 'T']);
    if !rest.is_empty() {
        // split off a zone suffix
        let zpos = rest.find(['Z', 'z', '+', '-']);
        let (clock, zone) = match zpos {
            Some(p) => (rest.get(..p)?, rest.get(p..)?),
            None => (rest, ""),
        };
        let clock = clock.trim();
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (clock, None),
        };
        let mut parts = hms.split(':');
        let h: i64 = num(parts.next()?)?;
        let mi: i64 = num(parts.next()?)?;
        let se: i64 = match parts.next() {
            Some(p) => num(p)?,
            None => 0,
        };
        if parts.next().is_some() || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs_of_day = h * 3600 + mi * 60 + se;
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut digits = f.to_string();
            digits.truncate(6);
            while digits.len() < 6 {
                digits.push('0');
            }
            us = num(&digits)?;
        }
        let zone = zone.trim();
        if !zone.is_empty() && !zone.eq_ignore_ascii_case("z") {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let z = zone.get(1..)?;
            let (zh, zm) = match z.split_once(':') {
                Some((a, b)) => (num::<i64>(a)?, num::<i64>(b)?),
                None if z.len() == 4 => (num::<i64>(z.get(..2)?)?, num::<i64>(z.get(2..)?)?),
                None => (num::<i64>(z)?, 0),
            };
            if zh > 15 || zm > 59 {
                return None;
            }
            offset_secs = sign * (zh * 3600 + zm * 60);
        }
    }
    let days = days_from_civil(y, m, d) - PG_EPOCH_DAYS;
    let secs = days
        .checked_mul(SECS_PER_DAY)?
        .checked_add(secs_of_day)?
        .checked_sub(offset_secs)?;
    secs.checked_mul(USECS_PER_SEC)?.checked_add(us)
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
