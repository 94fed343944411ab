//! `cron …` frequencies with croniter's semantics, on top of the `cron` crate.
//!
//! The `cron` crate parses and iterates plain expressions; this module adds what croniter
//! does around that, as the original intends to call it
//! (`croniter(expr, start_time=base, hash_id=source_id).get_next()`, then seconds replaced by
//! the hashed second; `spec/turku.md` §1.7):
//!
//! - field order `minute hour dom month dow [second [year]]` (the crate wants seconds first);
//! - `H`, `H(a-b)`, `H/n`, `H(a-b)/n` hashed per field from the CRC-32 of the source id,
//!   `R…` the same with a fresh random number; `@hourly`, `@daily`, … as hashed aliases;
//! - day of week 0–7 with Sunday = 0 and 7 (the crate numbers Sunday = 1);
//! - vixie-cron "day of month OR day of week" when both are restricted (the crate ANDs them).

use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use cron::{Schedule, TimeUnitSpec};

use crate::schedule::{hashedint, FrequencyError};

/// croniter's field ranges, by croniter field index.
const RANGES: [(i64, i64); 7] = [
    (0, 59),
    (0, 23),
    (1, 31),
    (1, 12),
    (0, 6),
    (0, 59),
    (1970, 2099),
];
const DOW_FIELD: usize = 4;
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Aliases croniter rewrites when a hash id is given (Turku always gives one).
fn alias(expr: &str) -> Option<&'static str> {
    Some(match expr.to_ascii_lowercase().as_str() {
        "@midnight" => "H H(0-2) * * * H",
        "@hourly" => "H * * * * H",
        "@daily" => "H H * * * H",
        "@weekly" => "H H * * H H",
        "@monthly" => "H H H * * H",
        "@yearly" | "@annually" => "H H H H * H",
        _ => return None,
    })
}

/// The next firing strictly after `base`, with the seconds replaced by `hashedint(0, 59, id)`.
pub fn next_after(
    expr: &str,
    id: &[u8],
    base: DateTime<Utc>,
    tz: Tz,
) -> Result<DateTime<Utc>, FrequencyError> {
    let schedules = compile(expr, id)?;
    let second = u32::try_from(hashedint(0, 59, id)).map_err(|_| FrequencyError::OutOfRange)?;
    let mut from = base.with_timezone(&tz);
    // Replacing the seconds can move a firing back before `base` when the expression has its
    // own seconds field; step on until it does not (the property "next is after base").
    // 61 firings always reach the next minute; more is a schedule that never fires again.
    for _ in 0..=61 {
        let next = schedules
            .iter()
            .filter_map(|s| s.after(&from).next())
            .min()
            .ok_or_else(|| FrequencyError::NoOccurrence(expr.to_owned()))?;
        // Every zone offset is a whole number of minutes, so replacing the seconds in UTC is
        // the same as on the wall clock, and never lands in a DST gap.
        let replaced = next
            .with_timezone(&Utc)
            .with_second(second)
            .ok_or(FrequencyError::OutOfRange)?;
        if replaced > base {
            return Ok(replaced);
        }
        from = next;
    }
    Err(FrequencyError::NoOccurrence(expr.to_owned()))
}

/// Expand the croniter expression into one or two `cron` crate schedules (two when day of
/// month and day of week are both restricted: their union is the croniter meaning).
pub fn compile(expr: &str, id: &[u8]) -> Result<Vec<Schedule>, FrequencyError> {
    let bad = |reason: String| FrequencyError::BadCron {
        expr: expr.to_owned(),
        reason,
    };
    let trimmed = expr.trim();
    let source = alias(trimmed).unwrap_or(trimmed);
    let fields: Vec<&str> = source.split_whitespace().collect();
    if !(5..=7).contains(&fields.len()) {
        return Err(bad(format!("expected 5 to 7 fields, got {}", fields.len())));
    }
    let mut expanded = Vec::with_capacity(fields.len());
    for (idx, field) in fields.iter().enumerate() {
        expanded.push(expand_hash(idx, field, id).map_err(bad)?);
    }
    let dow = dow_field(&expanded[DOW_FIELD]).map_err(bad)?;
    let second = expanded.get(5).map_or("0", String::as_str);
    let year = expanded.get(6).map_or("*", String::as_str);
    let build = |dom: &str, dow: &str| -> Result<Schedule, FrequencyError> {
        let text = format!(
            "{second} {} {} {dom} {} {dow} {year}",
            expanded[0], expanded[1], expanded[3]
        );
        Schedule::from_str(&text).map_err(|e| bad(e.to_string()))
    };
    let combined = build(&expanded[2], &dow)?;
    let dom_restricted = !combined.days_of_month().is_all();
    let dow_restricted = dow != "*";
    if dom_restricted && dow_restricted {
        Ok(vec![build(&expanded[2], "*")?, build("*", &dow)?])
    } else {
        Ok(vec![combined])
    }
}

/// croniter's hash expander: a whole field of the form `H`, `H(a-b)`, `H/n` or `H(a-b)/n`
/// (also `R…`, case-insensitive) becomes a number or a stepped range.
fn expand_hash(idx: usize, field: &str, id: &[u8]) -> Result<String, String> {
    let Some(first) = field.chars().next() else {
        return Ok(field.to_owned());
    };
    let random = match first {
        'H' | 'h' => false,
        'R' | 'r' => true,
        _ => return Ok(field.to_owned()),
    };
    let rest = &field[1..];
    let (range, rest) = match rest.strip_prefix('(') {
        Some(inner) => {
            let (range, after) = inner
                .split_once(')')
                .ok_or_else(|| format!("bad hash field {field:?}"))?;
            let (a, b) = range
                .split_once('-')
                .ok_or_else(|| format!("bad hash range {field:?}"))?;
            (Some((number(a, field)?, number(b, field)?)), after)
        }
        None => (None, rest),
    };
    let divisor = match rest {
        "" => None,
        _ => {
            let d = rest
                .strip_prefix('/')
                .ok_or_else(|| format!("bad hash field {field:?}"))?;
            Some(number(d, field)?)
        }
    };
    let (lo, hi) = RANGES
        .get(idx)
        .copied()
        .ok_or_else(|| "too many fields".to_owned())?;
    let crc = if random {
        i64::from(rand::random::<u32>())
    } else {
        i64::from(crc32fast::hash(id))
    };
    let pick = |begin: i64, end: i64| -> Result<i64, String> {
        if end < begin {
            return Err(format!("empty hash range in {field:?}"));
        }
        // croniter shifts the CRC right by the field index so fields differ.
        Ok(((crc >> idx) % (end - begin + 1)) + begin)
    };
    Ok(match (range, divisor) {
        (Some((a, b)), Some(n)) => {
            if n == 0 {
                return Err(format!("zero step in {field:?}"));
            }
            format!("{}-{b}/{n}", pick(a, n - 1 + a)?)
        }
        (Some((a, b)), None) => pick(a, b)?.to_string(),
        (None, Some(n)) => {
            if n == 0 {
                return Err(format!("zero step in {field:?}"));
            }
            format!("{}-{hi}/{n}", pick(lo, n - 1 + lo)?)
        }
        (None, None) => pick(lo, hi)?.to_string(),
    })
}

fn number(s: &str, field: &str) -> Result<i64, String> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad number in {field:?}"));
    }
    s.parse().map_err(|_| format!("bad number in {field:?}"))
}

/// Translate a croniter day-of-week field (0–7, Sunday = 0 or 7, names) into the crate's
/// numbering (Sunday = 1), as an explicit list, or `*` when every day is included
/// (croniter treats a full list as unrestricted, which matters for the OR rule).
fn dow_field(field: &str) -> Result<String, String> {
    let mut days = [false; 7];
    for item in field.split(',') {
        let (body, step) = match item.split_once('/') {
            Some((b, s)) => {
                let s = number(s, field)?;
                if s == 0 {
                    return Err(format!("zero step in {field:?}"));
                }
                (b, s)
            }
            None => (item, 1),
        };
        let (start, end) = if body == "*" || body == "?" {
            (0, 6)
        } else if let Some((a, b)) = body.split_once('-') {
            (dow_value(a, field)?, dow_value(b, field)?)
        } else {
            let v = dow_value(body, field)?;
            // `a/n` runs from a to the end of the range, like croniter.
            (v, if item.contains('/') { 6 } else { v })
        };
        if end < start {
            return Err(format!("reversed range in {field:?}"));
        }
        let mut d = start;
        while d <= end {
            if let Some(slot) =
                days.get_mut(usize::try_from(d % 7).map_err(|_| "range".to_owned())?)
            {
                *slot = true;
            }
            d += step;
        }
    }
    if days.iter().all(|&d| d) {
        return Ok("*".to_owned());
    }
    let list: Vec<String> = days
        .iter()
        .enumerate()
        .filter(|(_, &on)| on)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if list.is_empty() {
        return Err(format!("empty day-of-week field {field:?}"));
    }
    Ok(list.join(","))
}

fn dow_value(s: &str, field: &str) -> Result<i64, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = DAY_NAMES.iter().position(|n| *n == lower) {
        return i64::try_from(i).map_err(|_| "range".to_owned());
    }
    let v = number(s, field)?;
    if v > 7 {
        return Err(format!("day of week out of range in {field:?}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn naive(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        let t = NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|d| d.and_hms_opt(h, mi, s))
            .expect("valid test date");
        Utc.from_utc_datetime(&t)
    }

    /// croniter's own next (without Turku's second replacement).
    fn croniter_next(expr: &str, id: &[u8], start: DateTime<Utc>) -> DateTime<Utc> {
        compile(expr, id)
            .expect("compiles")
            .iter()
            .filter_map(|s| s.after(&start).next())
            .min()
            .expect("fires")
    }

    /// The vectors of the original's deleted `tests/test_croniter_hash.py` (§1.7).
    #[test]
    fn croniter_hash_vectors() {
        let start = naive(2020, 1, 1, 0, 0, 0);
        let hello = b"hello";
        assert_eq!(
            croniter_next("H * * * *", hello, start),
            naive(2020, 1, 1, 0, 10, 0)
        );
        let second = croniter_next("H * * * *", hello, naive(2020, 1, 1, 0, 10, 0));
        assert_eq!(second, naive(2020, 1, 1, 1, 10, 0));
        assert_eq!(
            croniter_next("H H * * *", hello, start),
            naive(2020, 1, 1, 11, 10, 0)
        );
        let first = croniter_next("H H H * *", hello, start);
        assert_eq!(first, naive(2020, 1, 1, 11, 10, 0));
        assert_eq!(
            croniter_next("H H H * *", hello, first),
            naive(2020, 2, 1, 11, 10, 0)
        );
        assert_eq!(
            croniter_next("H H H H *", hello, start),
            naive(2020, 9, 1, 11, 10, 0)
        );
        // croniter's current 0–6 day-of-week range gives the 3rd.
        assert_eq!(
            croniter_next("H H * * H", hello, start),
            naive(2020, 1, 3, 11, 10, 0)
        );
        assert_eq!(
            croniter_next("@midnight", hello, start),
            naive(2020, 1, 1, 2, 10, 32)
        );
        assert_eq!(
            croniter_next("@hourly", hello, start),
            naive(2020, 1, 1, 0, 10, 32)
        );
        assert_eq!(
            croniter_next("@daily", hello, start),
            naive(2020, 1, 1, 11, 10, 32)
        );
        assert_eq!(
            croniter_next("H H * * * H", hello, start),
            naive(2020, 1, 1, 11, 10, 32)
        );
        assert_eq!(
            croniter_next("H H H(3-5) * *", hello, start),
            naive(2020, 1, 5, 11, 10, 0)
        );
        assert_eq!(
            croniter_next("H * * * *", b"different id", start),
            naive(2020, 1, 1, 0, 24, 0)
        );
        assert_eq!(
            croniter_next("H H * * *", b"\x01\x02\x03\x04", start),
            naive(2020, 1, 1, 14, 53, 0)
        );
        assert_eq!(
            croniter_next("H H * * *", hello, naive(2011, 11, 11, 11, 11, 0)),
            naive(2011, 11, 12, 11, 10, 0)
        );
        let r = croniter_next("R R * * *", hello, start);
        assert!(r > start && r <= naive(2020, 1, 2, 0, 0, 0), "{r}");
        assert!(compile("X X * * *", hello).is_err());
    }

    #[test]
    fn hashed_steps_and_ranges() {
        // H/15 on minutes: offset crc % 15 = 907060870 % 15 = 10 → "10-59/15".
        assert_eq!(expand_hash(0, "H/15", b"hello"), Ok("10-59/15".to_owned()));
        // H(30-59)/10: offset in 30..=39.
        assert_eq!(
            expand_hash(0, "H(30-59)/10", b"hello"),
            Ok("30-59/10".to_owned())
        );
        assert_eq!(expand_hash(1, "h(8-16)", b"hello"), Ok("13".to_owned()));
        assert!(expand_hash(0, "H/0", b"hello").is_err());
        assert!(expand_hash(0, "H(5-1)", b"hello").is_err());
    }

    #[test]
    fn turku_replaces_seconds_and_stays_after_base() {
        let id = b"0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";
        let base = naive(2024, 1, 10, 12, 34, 56);
        // "42 8 * * *": tomorrow 08:42, seconds = hashedint(0, 59) = 3.
        assert_eq!(
            next_after("42 8 * * *", id, base, Tz::UTC),
            Ok(naive(2024, 1, 11, 8, 42, 3))
        );
        // A seconds field of its own whose replacement would fall before base steps on.
        let next = next_after("* * * * * *", id, base, Tz::UTC).expect("fires");
        assert_eq!(next, naive(2024, 1, 10, 12, 35, 3));
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 15th or any Monday: from Wed 2024-01-10, Monday the 15th; from the 15th, the 22nd (Mon).
        let id = b"x";
        let a = croniter_next("0 0 15 * 1", id, naive(2024, 1, 10, 0, 0, 0));
        assert_eq!(a, naive(2024, 1, 15, 0, 0, 0));
        let b = croniter_next("0 0 13 * 1", id, naive(2024, 1, 10, 0, 0, 0));
        assert_eq!(b, naive(2024, 1, 13, 0, 0, 0));
        // Sunday as 0 and 7 and by name.
        for dow in ["0", "7", "sun", "SUN"] {
            let s = croniter_next(&format!("0 0 * * {dow}"), id, naive(2024, 1, 10, 0, 0, 0));
            assert_eq!(s, naive(2024, 1, 14, 0, 0, 0), "{dow}");
        }
        assert_eq!(
            croniter_next("0 0 * * 1-5", id, naive(2024, 1, 12, 1, 0, 0)),
            naive(2024, 1, 15, 0, 0, 0)
        );
        assert_eq!(dow_field("0-7"), Ok("*".to_owned()));
        assert_eq!(dow_field("*/2"), Ok("1,3,5,7".to_owned()));
    }
}
