//! Source scheduling: the `frequency` grammar and the next-run computation
//! (`spec/turku.md` §1.7), with the original's CRC-32 hashed "jitter".
//!
//! All calendar arithmetic happens on wall-clock time in the server's time zone, as the
//! original does with aware Python datetimes: `today + timedelta(...)` adds to the wall
//! clock, and the result is mapped back to an instant with Python's `fold=0` rules (see
//! [`local_to_utc`]).
//!
//! Deliberate deviations (documented in `DEVIATIONS.md`):
//! - B3: a weekday frequency whose computed time is not after the base time moves one week
//!   on, instead of being due again at every check-in for the rest of the day.
//! - B2: `cron …` frequencies work (the original crashes on every one of them).
//! - B12: malformed time specs are an error (the caller answers 400), not a crash.

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::cronhash;

/// Why a frequency could not be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrequencyError {
    /// The `HHMM` or `HHMM-HHMM` part does not parse.
    #[error("invalid time specification {0:?} (expected HHMM or HHMM-HHMM)")]
    BadTime(String),
    /// The cron expression does not parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    BadCron {
        /// The expression after `cron`.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cron expression never fires again (e.g. a past year).
    #[error("cron expression {0:?} has no future occurrence")]
    NoOccurrence(String),
    /// The computed date falls outside the representable calendar.
    #[error("date out of range")]
    OutOfRange,
}

/// `hashedint(a, b, id)`: `crc32(id) mod (b - a + 1) + a`, the original's deterministic
/// replacement for `random.randint`. Every "random" choice for a source reuses the same
/// CRC, so a source's minute, second and day are fixed while different sources spread out.
///
/// Requires `a <= b`.
pub fn hashedint(a: i64, b: i64, id: &[u8]) -> i64 {
    let crc = i64::from(crc32fast::hash(id));
    crc % (b - a + 1) + a
}

/// The period word of a calendar frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    /// Sunday = 0 … Saturday = 6.
    Weekday(u32),
}

/// The optional second item of a calendar frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeSpec {
    /// No time given: a hashed second of the day.
    Hashed,
    /// `HHMM`: exactly this many seconds after midnight.
    At(i64),
    /// `HHMM-HHMM`: a hashed second in `[start, end]` (end already wrapped past midnight).
    Window(i64, i64),
}

/// A parsed `frequency` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frequency {
    /// `hourly`, `daily`, `weekly`, `monthly` or a weekday, with an optional time spec.
    Calendar {
        /// The period word.
        period: PeriodWord,
        /// The time of day.
        time: TimeOfDay,
    },
    /// `cron <expression>` with croniter's `H`/`R` extensions.
    Cron(String),
}

/// Public wrapper so callers can inspect a parsed frequency without depending on internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodWord(Period);

/// Public wrapper of the time-of-day part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay(TimeSpec);

impl Frequency {
    /// Parse a frequency string exactly as the original reads it: `cron` prefix first, then
    /// comma-separated items with surrounding whitespace stripped, only the first two used,
    /// unknown period words meaning `daily`.
    pub fn parse(frequency: &str) -> Result<Self, FrequencyError> {
        if frequency.starts_with("cron") {
            // The original rebuilds the expression as `" ".join(frequency.split(" ")[1:])`.
            let expr = frequency.split_once(' ').map_or("", |(_, rest)| rest);
            return Ok(Self::Cron(expr.to_owned()));
        }
        let mut items = frequency.split(',').map(str::trim);
        let word = items.next().unwrap_or_default();
        let period = match word {
            "hourly" => Period::Hourly,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "sunday" => Period::Weekday(0),
            "monday" => Period::Weekday(1),
            "tuesday" => Period::Weekday(2),
            "wednesday" => Period::Weekday(3),
            "thursday" => Period::Weekday(4),
            "friday" => Period::Weekday(5),
            "saturday" => Period::Weekday(6),
            // "daily" and anything unrecognised.
            _ => Period::Daily,
        };
        let time = match items.next() {
            None => TimeSpec::Hashed,
            Some(spec) => parse_time_spec(spec)?,
        };
        Ok(Self::Calendar {
            period: PeriodWord(period),
            time: TimeOfDay(time),
        })
    }

    /// The next run strictly after `base`, for the source whose primary key renders as
    /// `source_id` (canonical lowercase hyphenated UUID).
    pub fn next_after(
        &self,
        source_id: &str,
        base: DateTime<Utc>,
        tz: Tz,
    ) -> Result<DateTime<Utc>, FrequencyError> {
        let id = source_id.as_bytes();
        match self {
            Self::Cron(expr) => cronhash::next_after(expr, id, base, tz),
            Self::Calendar {
                period: PeriodWord(period),
                time: TimeOfDay(time),
            } => {
                let mut next = calendar_next(*period, *time, id, base, tz)?;
                if let Period::Weekday(_) = period {
                    // B3: the original returns a time earlier today when the weekday is today,
                    // leaving the source due on every ping until midnight. Same slot next week.
                    while next <= base {
                        next = add_local_days(next, 7, tz)?;
                    }
                }
                Ok(next)
            }
        }
    }
}

/// Parse and compute in one go (the original's `frequency_next_scheduled`).
pub fn next_run(
    frequency: &str,
    source_id: &str,
    base: DateTime<Utc>,
    tz: Tz,
) -> Result<DateTime<Utc>, FrequencyError> {
    Frequency::parse(frequency)?.next_after(source_id, base, tz)
}

/// `HHMM` or `HHMM-HHMM`, read positionally like the original (`int(s[0:2])`, `int(s[2:4])`,
/// items after a second `-` ignored). Components accept what Python's `int()` accepts for
/// non-negative numbers (surrounding whitespace, a `+`); 0–99 each, as the original does not
/// range-check either (`0860` is 09:00).
fn parse_time_spec(spec: &str) -> Result<TimeSpec, FrequencyError> {
    let bad = || FrequencyError::BadTime(spec.to_owned());
    let mut parts = spec.split('-');
    let start = hhmm(parts.next().unwrap_or_default()).ok_or_else(bad)?;
    match parts.next() {
        None => Ok(TimeSpec::At(start)),
        Some(end) => {
            let mut end = hhmm(end).ok_or_else(bad)?;
            if end < start {
                end += 86_400;
            }
            Ok(TimeSpec::Window(start, end))
        }
    }
}

fn hhmm(s: &str) -> Option<i64> {
    let chars: Vec<char> = s.chars().collect();
    let slice =
        |from: usize, to: usize| -> String { chars.iter().skip(from).take(to - from).collect() };
    let hours = py_uint(&slice(0, 2))?;
    let minutes = py_uint(&slice(2, 4))?;
    Some(hours * 3600 + minutes * 60)
}

/// Python `int(s)` restricted to non-negative ASCII decimal numbers.
fn py_uint(s: &str) -> Option<i64> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn calendar_next(
    period: Period,
    time: TimeSpec,
    id: &[u8],
    base: DateTime<Utc>,
    tz: Tz,
) -> Result<DateTime<Utc>, FrequencyError> {
    let local = base.with_timezone(&tz).naive_local();
    if period == Period::Hourly {
        // The hashed value is used for both minute and second (B4, kept for parity); any
        // time spec is ignored.
        let h = u32::try_from(hashedint(0, 59, id)).map_err(|_| FrequencyError::OutOfRange)?;
        let wall = local
            .date()
            .and_hms_opt(local.hour(), h, h)
            .ok_or(FrequencyError::OutOfRange)?
            + Duration::hours(1);
        return Ok(local_to_utc(wall, tz));
    }
    let today = local.date();
    let days_since_sunday = i64::from(today.weekday().num_days_from_sunday());
    let target: NaiveDate = match period {
        Period::Daily | Period::Hourly => add_days(today, 1)?,
        Period::Weekly => add_days(today, 7 - days_since_sunday + hashedint(0, 6, id))?,
        Period::Weekday(day) => {
            let t = add_days(today, i64::from(day) - days_since_sunday)?;
            if t < today {
                add_days(t, 7)?
            } else {
                t
            }
        }
        Period::Monthly => {
            let next_month = first_of_next_month(today)?;
            let month_after = first_of_next_month(next_month)?;
            let days = (month_after - next_month).num_days();
            // 2nd of next month … 1st of the month after (B10, kept for parity).
            add_days(next_month, hashedint(1, days, id))?
        }
    };
    let seconds = match time {
        TimeSpec::Hashed => hashedint(0, 86_399, id),
        TimeSpec::At(s) => s,
        TimeSpec::Window(start, end) => hashedint(start, end, id),
    };
    let wall = target.and_time(NaiveTime::MIN) + Duration::seconds(seconds);
    Ok(local_to_utc(wall, tz))
}

fn add_days(d: NaiveDate, days: i64) -> Result<NaiveDate, FrequencyError> {
    d.checked_add_signed(Duration::days(days))
        .ok_or(FrequencyError::OutOfRange)
}

fn first_of_next_month(d: NaiveDate) -> Result<NaiveDate, FrequencyError> {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).ok_or(FrequencyError::OutOfRange)
}

fn add_local_days(t: DateTime<Utc>, days: i64, tz: Tz) -> Result<DateTime<Utc>, FrequencyError> {
    let wall = t.with_timezone(&tz).naive_local();
    let wall = wall
        .checked_add_signed(Duration::days(days))
        .ok_or(FrequencyError::OutOfRange)?;
    Ok(local_to_utc(wall, tz))
}

/// Map a wall-clock time to an instant with Python's `fold=0` rules: an ambiguous time
/// (clocks going back) takes its first occurrence; a time in a gap (clocks going forward)
/// keeps the offset in force before the gap, which lands after the gap.
pub fn local_to_utc(wall: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // Gaps are at most a few hours; a day earlier is safely before the transition.
            let before = wall - Duration::days(1);
            let offset = tz.from_local_datetime(&before).earliest().map_or(0, |t| {
                i64::from(chrono::Offset::fix(t.offset()).local_minus_utc())
            });
            Utc.from_utc_datetime(&(wall - Duration::seconds(offset)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    const ID: &str = "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";

    #[test]
    fn hashedint_vectors() {
        assert_eq!(hashedint(1, 100, b"hello"), 71);
        assert_eq!(hashedint(1, 100, b"\x01\x02\x03"), 26);
        assert_eq!(hashedint(1, 100, b""), 1);
        assert_eq!(crc32fast::hash(ID.as_bytes()), 0x02b8_d77f);
    }

    /// The worked examples of `spec/turku.md` §1.7 (base 2024-01-10T12:34:56Z, UTC).
    #[test]
    fn worked_examples() {
        let base = at("2024-01-10T12:34:56Z");
        let cases = [
            ("hourly", "2024-01-10T13:03:03Z"),
            ("daily", "2024-01-11T13:37:03Z"),
            ("weekly", "2024-01-20T13:37:03Z"),
            ("monday", "2024-01-15T13:37:03Z"),
            ("wednesday", "2024-01-10T13:37:03Z"),
            ("thursday", "2024-01-11T13:37:03Z"),
            ("monthly", "2024-02-11T13:37:03Z"),
            ("bogus", "2024-01-11T13:37:03Z"),
            ("daily, 0800-1600", "2024-01-11T13:10:38Z"),
            ("daily, 2200-0200", "2024-01-11T22:44:12Z"),
            ("daily, 0300", "2024-01-11T03:00:00Z"),
            ("tuesday, 0200-0500", "2024-01-16T02:26:35Z"),
            ("hourly, 0800-1600", "2024-01-10T13:03:03Z"),
            (" daily ,  0300 , ignored", "2024-01-11T03:00:00Z"),
        ];
        for (freq, want) in cases {
            assert_eq!(next_run(freq, ID, base, Tz::UTC), Ok(at(want)), "{freq}");
        }
    }

    /// B3: the same weekday with a time already past moves to next week instead of staying due.
    #[test]
    fn same_weekday_in_the_past_moves_a_week() {
        let base = at("2024-01-10T14:00:00Z");
        assert_eq!(
            next_run("wednesday", ID, base, Tz::UTC),
            Ok(at("2024-01-17T13:37:03Z"))
        );
        assert_eq!(
            next_run("wednesday, 0300", ID, base, Tz::UTC),
            Ok(at("2024-01-17T03:00:00Z"))
        );
        // Still later today: unchanged from the original.
        assert_eq!(
            next_run("wednesday, 2300", ID, base, Tz::UTC),
            Ok(at("2024-01-10T23:00:00Z"))
        );
    }

    #[test]
    fn python_int_quirks_of_time_specs() {
        let base = at("2024-01-10T12:34:56Z");
        // Minutes are not range-checked by the original: 08:60 is 09:00.
        assert_eq!(
            next_run("daily, 0860", ID, base, Tz::UTC),
            Ok(at("2024-01-11T09:00:00Z"))
        );
        // "800" reads as hours "80", minutes "0": 80 hours after midnight tomorrow.
        assert_eq!(
            next_run("daily, 800", ID, base, Tz::UTC),
            Ok(at("2024-01-14T08:00:00Z"))
        );
        for bad in [
            "daily, 8:00",
            "daily, ",
            "daily, -100",
            "daily, 0800-",
            "daily, ab00",
        ] {
            assert!(
                matches!(
                    next_run(bad, ID, base, Tz::UTC),
                    Err(FrequencyError::BadTime(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn server_time_zone_is_honoured() {
        // Helsinki is UTC+2 in January: "daily, 0300" means 03:00 local = 01:00Z.
        let tz: Tz = "Europe/Helsinki".parse().expect("known zone");
        let base = at("2024-01-10T12:34:56Z");
        assert_eq!(
            next_run("daily, 0300", ID, base, tz),
            Ok(at("2024-01-11T01:00:00Z"))
        );
        // Spring-forward gap (03:00–04:00 local does not exist on 2024-03-31): fold=0 keeps
        // the pre-gap offset, landing an hour later on the wall clock.
        let base = at("2024-03-30T12:00:00Z");
        assert_eq!(
            next_run("daily, 0330", ID, base, tz),
            Ok(at("2024-03-31T01:30:00Z"))
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const ZONES: [&str; 4] = [
        "UTC",
        "Europe/Helsinki",
        "America/New_York",
        "Australia/Lord_Howe",
    ];

    fn frequency() -> impl Strategy<Value = String> {
        let words = prop::sample::select(vec![
            "hourly",
            "daily",
            "weekly",
            "monthly",
            "sunday",
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "bogus",
        ]);
        let time = prop_oneof![
            Just(String::new()),
            (0u32..24, 0u32..60).prop_map(|(h, m)| format!(", {h:02}{m:02}")),
            (0u32..24, 0u32..60, 0u32..24, 0u32..60)
                .prop_map(|(a, b, c, d)| format!(", {a:02}{b:02}-{c:02}{d:02}")),
        ];
        let calendar = (words, time).prop_map(|(w, t)| format!("{w}{t}"));
        let cron = prop::sample::select(vec![
            "cron H H * * *",
            "cron H/15 * * * *",
            "cron 0 3 * * 1-5",
            "cron @daily",
            "cron @midnight",
            "cron * * * * * *",
            "cron H H(8-16) * * H",
            "cron 0 0 1,15 * 0",
            "cron R R * * *",
            "cron H H H * *",
        ])
        .prop_map(str::to_owned);
        prop_oneof![3 => calendar, 1 => cron]
    }

    proptest! {
        /// After the B3 fix, the next run is always strictly after its base time, in any zone.
        #[test]
        fn next_is_always_after_base(
            freq in frequency(),
            secs in 0i64..4_102_444_800 - 86_400 * 400,
            micros in 0u32..1_000_000,
            id in any::<[u8; 16]>(),
            zone in prop::sample::select(ZONES.to_vec()),
        ) {
            let base = DateTime::from_timestamp(secs, micros * 1000).expect("in range");
            let id = uuid::Uuid::from_bytes(id).hyphenated().to_string();
            let tz: Tz = zone.parse().expect("zone");
            let next = next_run(&freq, &id, base, tz).expect("schedules");
            prop_assert!(next > base, "{freq} {zone} {base} → {next}");
            // And not absurdly far: every form fires within about two months.
            prop_assert!(next - base <= Duration::days(70), "{freq} {zone} {base} → {next}");
        }

        /// Cron expressions built from valid and invalid field syntax never panic.
        #[test]
        fn cron_fields_never_panic(
            fields in prop::collection::vec(prop::sample::select(vec![
                "*", "?", "H", "h", "R", "H(1-5)", "H(5-1)", "H(0-99999)", "H/7", "H/0", "H(2-9)/3", "R(1-3)/2",
                "0", "7", "8", "59", "60", "99999999999", "1-5", "5-1", "*/0", "*/15", "1,2,3", "mon-fri", "sun",
                "jan", "L", "15W", "1#2", "-", ",", "/", "2099", "1969", "H(",
            ]), 0..9),
            secs in 0i64..4_000_000_000,
        ) {
            let base = DateTime::from_timestamp(secs, 0).expect("in range");
            let freq = format!("cron {}", fields.join(" "));
            if let Ok(next) = next_run(&freq, "id", base, Tz::UTC) {
                prop_assert!(next > base, "{freq} {base} → {next}");
            }
        }

        /// The parser never panics, whatever the input.
        #[test]
        fn parser_never_panics(s in ".{0,40}", secs in 0i64..4_000_000_000) {
            let base = DateTime::from_timestamp(secs, 0).expect("in range");
            let _ = next_run(&s, "id", base, Tz::UTC);
        }
    }
}
