//! The `frequency` grammar (calendar words, time specs, croniter-style `cron …`): never a
//! panic, and whatever schedules lies strictly after its base time.
//!
//! Input: 8 bytes of base time, 1 byte of zone choice, then the frequency text.

#![no_main]

use chrono::DateTime;
use chrono_tz::Tz;
use libfuzzer_sys::fuzz_target;
use turku_coordinator::schedule::next_run;

const ZONES: [Tz; 4] = [
    Tz::UTC,
    Tz::Europe__Helsinki,
    Tz::America__New_York,
    Tz::Australia__Lord_Howe,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&head[..8]);
    // Keep the base within the years the schedules are defined for (1970–2099).
    let secs = i64::from_le_bytes(secs).rem_euclid(4_000_000_000);
    let Some(base) = DateTime::from_timestamp(secs, 0) else {
        return;
    };
    let tz = ZONES[usize::from(head[8]) % ZONES.len()];
    let Ok(freq) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(next) = next_run(freq, "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11", base, tz) {
        assert!(next > base, "{freq:?} from {base} gave {next}");
    }
});
