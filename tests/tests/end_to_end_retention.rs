//! The scenario 4: retention over simulated days, with all three programs as
//! separate processes (`turku-api serve`, `turku-storage serve`, our `turku-agent`, stock
//! rsync and ssh) on 127.0.0.1.
//!
//! Nothing sleeps through the days: the storage daemon runs with the store's test clock
//! (`TURKU_CLOCK_FILE`), which the test moves forward before each backup. After every backup
//! the snapshots the store still holds must be exactly those the Turku rules
//! (`spec/turku.md` §2.6) keep at that moment, as computed here by a model of the rules
//! written apart from the store's own retention code, so a bug there fails this test. At the
//! end the daemon's GC must have given back the forgotten snapshots' data, `verify` must be
//! clean and every kept snapshot must export equal to the tree it captured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use turku_testkit::system::{eventually, stderr, Agent, Coordinator, StorageDaemon};
use turku_testkit::{assert_same_tree, pack_files_bytes, random_file};

const RETENTION: &str = "last 5 days, earliest of 1 week, earliest of 1 month";
const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// 2024-02-24 00:00 UTC, a Saturday: the run crosses a leap day, two month starts and six
/// Sundays.
const FIRST_DAY: i64 = 1_708_732_800;
const DAYS: i64 = 40;
const MIB: usize = 1024 * 1024;
/// The part of the tree every snapshot shares.
const STABLE_BYTES: usize = 256 * 1024;
/// Each backup's own data: a file of fresh random bytes.
const DAILY_BYTES: usize = MIB;

/// (year, month, day) of a day counted from 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2024-03-01T01:00:00Z`, as `snapshots --json` writes a whole second.
fn rfc3339(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / HOUR,
        s % HOUR / 60,
        s % 60
    )
}

/// The spec's rules for [`RETENTION`] at `now` (UTC, the storage's default zone), over the
/// snapshot times `held`: what stays.
fn turku_keeps(now: i64, held: &BTreeSet<i64>) -> BTreeSet<i64> {
    let today = now.div_euclid(DAY) * DAY;
    // 1970-01-01 was a Thursday: four days after a Sunday.
    let since_sunday = (now.div_euclid(DAY) + 4).rem_euclid(7);
    let (_, _, day_of_month) = civil_from_days(now.div_euclid(DAY));
    let earliest_from = |cutoff: i64| held.range(cutoff..).next().copied();
    let mut keep: BTreeSet<i64> = held.range(now - 5 * DAY..).copied().collect();
    keep.extend(earliest_from(today - since_sunday * DAY));
    keep.extend(earliest_from(today - (day_of_month - 1) * DAY));
    if keep.is_empty() {
        return held.clone();
    }
    keep
}

/// Backup `n`'s tree: a shared file, a fresh random file and a note naming the backup. Every
/// mtime is set, distinct per backup, so stock rsync's quick check sees each change.
fn fill_tree(root: &Path, n: u64) {
    std::fs::create_dir_all(root).unwrap();
    let base = 1_600_000_000;
    let stable = root.join("stable.bin");
    if !stable.exists() {
        random_file(&stable, 1, STABLE_BYTES);
        set_mtime(&stable, base);
    }
    let daily = root.join("daily.bin");
    random_file(&daily, 1000 + n, DAILY_BYTES);
    set_mtime(&daily, base + 10 * n as i64);
    let note = root.join("note.txt");
    std::fs::write(&note, format!("backup {n}\n")).unwrap();
    set_mtime(&note, base + 10 * n as i64 + 1);
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_file_times(path, t, t).unwrap();
}

/// The clock times of the store's snapshots of `uuid`/`data`, by `time_end`.
fn held_times(storage: &StorageDaemon, uuid: &str) -> BTreeMap<String, String> {
    let out =
        storage.store_command(&["snapshots", "--machine", uuid, "--source", "data", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["time_end"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn store_stats(storage: &StorageDaemon) -> serde_json::Value {
    let out = storage.store_command(&["stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The backups of one simulated day: at an hour that cycles every five days (so the snapshot
/// of five days before sits exactly on the `last 5 days` cutoff), plus an evening one on
/// every fourth day.
fn backups_of_day(day: i64) -> Vec<i64> {
    let first = FIRST_DAY + day * DAY + HOUR + (day * 7 % 5) * HOUR;
    let mut times = vec![first];
    if day % 4 == 1 {
        times.push(FIRST_DAY + day * DAY + 20 * HOUR);
    }
    times
}

#[test]
fn the_model_of_the_rules_matches_the_specs_worked_example() {
    // spec §2.6: daily at 01:00 from 2024-01-20 to 2024-03-14, now 2024-03-15 12:00Z;
    // `last 5 days, earliest of month` keeps 03-01 and 03-11 … 03-14. Our policy adds the
    // first since Sunday 03-10, which is 03-10.
    let jan20 = 1_705_708_800 + HOUR;
    let held: BTreeSet<i64> = (0..55).map(|d| jan20 + d * DAY).collect();
    let now = 1_710_460_800 + 12 * HOUR;
    assert_eq!(rfc3339(now), "2024-03-15T12:00:00Z");
    let kept: Vec<String> = turku_keeps(now, &held)
        .into_iter()
        .map(|t| rfc3339(t)[5..10].to_owned())
        .collect();
    assert_eq!(kept, ["03-01", "03-10", "03-11", "03-12", "03-13", "03-14"]);
}

#[test]
fn retention_over_forty_simulated_days_keeps_the_turku_set_and_gc_returns_the_space() {
    let work = tempfile::tempdir().unwrap();
    let clock = work.path().join("clock");
    let set_clock = |t: i64| std::fs::write(&clock, format!("{t}\n")).unwrap();
    set_clock(FIRST_DAY);

    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start_with_env(
        &coordinator,
        "storage-days",
        // GC follows every backup at once, so the space comes back as the days pass.
        serde_json::json!({"gc_min_interval": 0.001}),
        &[("TURKU_CLOCK_FILE", clock.as_os_str())],
    );
    assert!(
        storage.log().contains("TURKU_CLOCK_FILE"),
        "the daemon does not say its clock is overridden:\n{}",
        storage.log()
    );
    let tree = work.path().join("data");
    fill_tree(&tree, 0);
    let agent = Agent::new(
        &coordinator,
        serde_json::json!({"data": {"path": tree, "retention": RETENTION}}),
    );
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();

    // What the store must hold, and a copy of each held snapshot's tree.
    let mut held: BTreeSet<i64> = BTreeSet::new();
    let mut copies: BTreeMap<i64, PathBuf> = BTreeMap::new();
    let mut backups = 0u64;
    for day in 0..DAYS {
        for at in backups_of_day(day) {
            set_clock(at);
            fill_tree(&tree, backups);
            let copy = work.path().join(format!("copy-{backups}"));
            let cp = std::process::Command::new("cp")
                .arg("-a")
                .arg(&tree)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(cp.success());
            backups += 1;

            coordinator.manage(&["backup-now", &uuid, "data"]);
            let out = agent.run_ok(&["ping"]);

            held.insert(at);
            copies.insert(at, copy);
            held = turku_keeps(at, &held);
            for gone in copies
                .keys()
                .filter(|t| !held.contains(t))
                .copied()
                .collect::<Vec<_>>()
            {
                std::fs::remove_dir_all(copies.remove(&gone).unwrap()).unwrap();
            }
            let want: BTreeSet<String> = held.iter().map(|t| rfc3339(*t)).collect();
            let got = held_times(&storage, &uuid);
            let got_times: BTreeSet<String> = got.keys().cloned().collect();
            assert_eq!(
                got_times,
                want,
                "at {} (backup {backups}) the store holds {got:?}\nping: {}\ndaemon log:\n{}",
                rfc3339(at),
                stderr(&out),
                storage.log()
            );
        }
    }

    // The last day by hand (2024-04-03, a Wednesday, 04:00): everything since 03-29 04:00,
    // that one included (exactly 5 × 24 h back); the first since Sunday 03-31 00:00 (03-31
    // 03:00) and the first of April (04-01 05:00) are among them already.
    let last: Vec<String> = held.iter().map(|t| rfc3339(*t)).collect();
    assert_eq!(
        last,
        [
            "2024-03-29T04:00:00Z",
            "2024-03-30T01:00:00Z",
            "2024-03-31T03:00:00Z",
            "2024-04-01T05:00:00Z",
            "2024-04-01T20:00:00Z",
            "2024-04-02T02:00:00Z",
            "2024-04-03T04:00:00Z",
        ],
        "the model's last kept set"
    );

    // GC after the backups gives back every forgotten snapshot's own data: what stays is the
    // shared file and one daily file per kept snapshot, against `backups` written.
    let kept = held.len();
    let bound = (STABLE_BYTES + kept * DAILY_BYTES + 256 * 1024) as u64;
    eventually(
        "the daemon's GC to free the forgotten snapshots' data",
        Duration::from_secs(60),
        || {
            let stats = store_stats(&storage);
            stats["dead_bytes"].as_u64() == Some(0)
                && stats["pack_bytes"].as_u64().unwrap() <= bound
                && pack_files_bytes(&storage.store) <= bound
        },
    );
    let stats = store_stats(&storage);
    assert_eq!(stats["snapshots"].as_u64(), Some(kept as u64), "{stats}");
    // Against what went in: each backup brought a fresh daily file.
    let written = backups * DAILY_BYTES as u64;
    assert!(
        pack_files_bytes(&storage.store) * 4 < written,
        "packs {} bytes after {backups} backups of {written} bytes",
        pack_files_bytes(&storage.store)
    );

    storage.assert_verifies_clean();
    for (time_end, name) in held_times(&storage, &uuid) {
        let at = held
            .iter()
            .find(|t| rfc3339(**t) == time_end)
            .copied()
            .unwrap();
        let exported = storage.export(&uuid, "data", &name);
        assert_same_tree(&copies[&at], &exported.path().join("tree"));
    }
}

/// `turku-storage --store STORE ARGS...` with the test clock `clock`.
fn storage_at(store: &Path, clock: &Path, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new(turku_testkit::system::turku_storage_binary())
        .arg("--store")
        .arg(store)
        .args(args)
        .env("TURKU_CLOCK_FILE", clock)
        .env_remove("TURKU_STORE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    turku_testkit::system::wait_bounded(child, Duration::from_secs(60), "turku-storage")
}

#[test]
fn the_clock_file_names_snapshots_and_dates_forget_and_a_garbled_one_fails_the_backup() {
    let work = tempfile::tempdir().unwrap();
    let (store, clock, tree) = (
        work.path().join("store"),
        work.path().join("clock"),
        work.path().join("tree"),
    );
    fill_tree(&tree, 0);
    std::fs::write(&clock, "2024-03-01T01:00:00Z\n").unwrap();
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(storage_at(&store, &clock, &["init"]));
    let ingest = ["ingest", "--machine", "m", "--source", "s"];
    let with_tree = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        v.push(tree.to_str().unwrap().to_owned());
        v
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        storage_at(&store, &clock, &args)
    };
    let first = ok(run(with_tree(&ingest)));
    assert!(first.contains("s_20240301-010000_"), "{first}");

    // Unreadable or garbled: the backup fails and says why, no snapshot with another time.
    std::fs::write(&clock, "next tuesday").unwrap();
    let out = run(with_tree(&ingest));
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("TURKU_CLOCK_FILE") && said.contains("next tuesday"),
        "{said}"
    );
    std::fs::remove_file(&clock).unwrap();
    assert!(!run(with_tree(&ingest)).status.success());

    // Ten days on, `forget` dates the rules by the same clock: `last 5 days` drops the first.
    std::fs::write(&clock, format!("{}", 1_709_254_800 + 10 * DAY)).unwrap();
    fill_tree(&tree, 1);
    let second = ok(run(with_tree(&ingest)));
    assert!(second.contains("s_20240311-010000_"), "{second}");
    let forgot = ok(storage_at(
        &store,
        &clock,
        &[
            "forget",
            "--machine",
            "m",
            "--source",
            "s",
            "--retention",
            "last 5 days",
        ],
    ));
    assert!(
        forgot.contains("forgot s_20240301-010000_") && !forgot.contains("s_20240311"),
        "{forgot}"
    );
}
