//! The whole backup path end to end, as a machine drives it: a real `turku-storage serve`
//! (release build, with the real coordinator) pulls a generated ~45 MB tree from a stock
//! `rsync --daemon` through the agent's stock `ssh -R` into its embedded SSH server. Timed is
//! the agent's whole ssh session (the ping), for:
//! 1. `initial`: an empty store each time (MiB/s of the tree);
//! 2. `unchanged`: nothing changed since the last backup;
//! 3. `changed`: ~1% of the files appended to (a different 1% each time).
//!
//! `benches/gate.sh` compares the same cases against the original Turku storage (stock sshd
//! and stock rsync --link-dest) on a larger corpus and gates the ratios.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use turku_testkit::random_bytes;
use turku_testkit::system::{assert_ping_ok, AgentRsyncd, Coordinator, StorageDaemon, TestAgent};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const TEXT_FILES: usize = 1200;
const BINARY_FILES: usize = 24;
const LARGE_FILE_BYTES: usize = 6 * MIB;
const SYMLINKS: usize = 30;
/// One file in this many is changed per `changed` backup.
const CHANGE_EVERY: usize = 100;
const SOURCE: &str = "data";
/// The daemon counts as idle after a window in which it used at most one clock tick of CPU.
const IDLE_WINDOW: Duration = Duration::from_millis(200);
const IDLE_BOUND: Duration = Duration::from_secs(120);

/// Text-like bytes: letters drawn with English-like frequencies, so they compress as prose
/// does, not as runs of one byte.
fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const LETTERS: &[u8] =
        b"eeeeeeetttttaaaaooooiiiinnnnsssshhhrrrdddllluuccmmwwffggyyppbbvkjxqz      \n";
    random_bytes(seed, len)
        .into_iter()
        .map(|b| LETTERS[usize::from(b) % LETTERS.len()])
        .collect()
}

/// The tree: many small text files in nested directories, some incompressible files, two
/// large ones, relative symlinks. Returns its size in bytes.
fn write_tree(root: &Path) -> u64 {
    let mut total = 0;
    let mut files = Vec::new();
    for i in 0..TEXT_FILES {
        let dir = root.join(format!("d{:02}/s{}/t{}", i % 20, i % 3, i % 7));
        fs::create_dir_all(&dir).unwrap();
        let len = 512 << (random_bytes(i as u64, 1)[0] % 8);
        let path = dir.join(format!("f{i:04}.txt"));
        fs::write(&path, text_bytes(i as u64, len)).unwrap();
        total += len;
        files.push(path);
    }
    for i in 0..BINARY_FILES {
        let dir = root.join(format!("media/m{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        let len = 64 * KIB + (i * 37 * KIB) % MIB;
        fs::write(
            dir.join(format!("b{i:02}.jpg")),
            random_bytes(10_000 + i as u64, len),
        )
        .unwrap();
        total += len;
    }
    fs::create_dir_all(root.join("big")).unwrap();
    fs::write(
        root.join("big/log.txt"),
        text_bytes(20_000, LARGE_FILE_BYTES),
    )
    .unwrap();
    fs::write(
        root.join("big/disk.img"),
        random_bytes(20_001, LARGE_FILE_BYTES),
    )
    .unwrap();
    total += 2 * LARGE_FILE_BYTES;
    for (i, target) in files.iter().step_by(TEXT_FILES / SYMLINKS).enumerate() {
        let target = target.strip_prefix(root).unwrap();
        std::os::unix::fs::symlink(
            Path::new("..").join(target),
            root.join(format!("big/link{i:02}")),
        )
        .unwrap();
    }
    total as u64
}

/// Appends a line to one file in [`CHANGE_EVERY`], starting at `round`: the size changes,
/// so stock rsync's quick check sees it whatever the clock's resolution.
fn change_one_percent(root: &Path, round: usize) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    for path in files
        .iter()
        .skip(round % CHANGE_EVERY)
        .step_by(CHANGE_EVERY)
    {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "changed in round {round}").unwrap();
    }
}

/// CPU clock ticks `pid` has used, all threads.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of proc(5), counted from the state after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits until `pid` is idle: the daemon's GC after a backup (compressing what the adaptive
/// mode stored raw) runs after the session and must not slow the next timed backup.
fn wait_idle(pid: u32) {
    let deadline = Instant::now() + IDLE_BOUND;
    let mut before = cpu_ticks(pid);
    loop {
        std::thread::sleep(IDLE_WINDOW);
        let now = cpu_ticks(pid);
        if now - before <= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon stayed busy for {IDLE_BOUND:?}"
        );
        before = now;
    }
}

struct Setup {
    coordinator: Coordinator,
    storage: StorageDaemon,
    agent: TestAgent,
    rsyncd: AgentRsyncd,
    tree: PathBuf,
    tree_bytes: u64,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let tree = dir.path().join("tree");
        let tree_bytes = write_tree(&tree);
        let coordinator = Coordinator::start();
        let storage = StorageDaemon::start(&coordinator, "bench-storage", serde_json::json!({}));
        let agent = TestAgent::register(&coordinator, "bench", &[(SOURCE, &tree)]);
        let rsyncd = agent.start_rsyncd(&[(SOURCE, &tree)], &[]);
        Setup {
            coordinator,
            storage,
            agent,
            rsyncd,
            tree,
            tree_bytes,
            _dir: dir,
        }
    }

    /// One backup: made due (not timed), then the agent's ping (timed).
    fn timed_backup(&self) -> Duration {
        self.agent.make_due(&self.coordinator, SOURCE);
        let started = Instant::now();
        let out = self.agent.ping(&self.storage, &self.rsyncd);
        let took = started.elapsed();
        assert_ping_ok(&out);
        wait_idle(self.storage.pid().unwrap());
        took
    }

    fn snapshot_count(&self) -> usize {
        self.storage.snapshots(&self.agent.uuid, SOURCE).len()
    }

    /// An empty store: the daemon stopped, its store removed, started again.
    fn empty_store(&mut self) {
        self.storage.kill();
        fs::remove_dir_all(&self.storage.store).unwrap();
        self.storage.restart();
    }

    /// The newest snapshot must hold the tree as it is (a bench that copies nothing is fast).
    fn assert_latest_is_tree(&self) {
        let latest = self
            .storage
            .snapshots(&self.agent.uuid, SOURCE)
            .pop()
            .unwrap();
        let export = self.storage.export(&self.agent.uuid, SOURCE, &latest);
        turku_testkit::assert_rsync_sees_no_difference(&self.tree, &export.path().join("tree"));
    }
}

fn tunnel(c: &mut Criterion) {
    let mut setup = Setup::new();
    let mut g = c.benchmark_group("tunnel");
    // One backup is one iteration; flat sampling keeps it to a few per sample.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1));

    g.throughput(Throughput::Bytes(setup.tree_bytes))
        .measurement_time(Duration::from_secs(15));
    g.bench_function("initial", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                setup.empty_store();
                total += setup.timed_backup();
                assert_eq!(setup.snapshot_count(), 1, "the backup made no snapshot");
            }
            total
        })
    });
    setup.assert_latest_is_tree();

    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("unchanged", |b| {
        b.iter_custom(|iters| {
            let before = setup.snapshot_count();
            let total = (0..iters).map(|_| setup.timed_backup()).sum();
            assert_eq!(setup.snapshot_count(), before + iters as usize);
            total
        })
    });
    setup.assert_latest_is_tree();

    let mut round = 0;
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("changed_1pct", |b| {
        b.iter_custom(|iters| {
            let before = setup.snapshot_count();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                change_one_percent(&setup.tree, round);
                total += setup.timed_backup();
            }
            assert_eq!(setup.snapshot_count(), before + iters as usize);
            total
        })
    });
    setup.assert_latest_is_tree();
    g.finish();
}

criterion_group!(benches, tunnel);
criterion_main!(benches);
