//! The `frequency` grammar (calendar words, time specs, croniter-style `cron …`): never a
//! panic, and whatever schedules lies strictly after its base time.
//!
//! Input: 8 bytes of base time, 1 byte of zone choice, then the frequency text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_coordinator::fuzzing::coordinator_frequency(data));
