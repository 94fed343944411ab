//! Faults across the whole system, every program a separate process on 127.0.0.1: the
//! coordinator (`turku-api serve`), the storage daemon (`turku-storage serve`), our agent
//! (`turku-agent`) with the stock `rsync --daemon` and stock `ssh` it starts. Each fault
//! must leave the store clean, lose no snapshot, say clearly what happened, and leave the
//! source due so the next ping backs it up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use turku_testkit::system::{
    backup_logs, due, eventually, processes_mentioning, stderr, Agent, Coordinator, ProcessGroup,
    StorageDaemon,
};
use turku_testkit::tmpfs::Tmpfs;
use turku_testkit::{
    assert_same_tree, backdate_recent, disk_usage, files_under, make_awkward_tree,
    pack_files_bytes, random_file,
};

/// Bound on an interrupted ping ending, and on what it leaves behind going away.
const AFTERMATH_BOUND: Duration = Duration::from_secs(20);
/// The slowed transfer: this many KiB/s through the agent's rsync daemon, so a 4 MiB file
/// takes about 16 s and a fault struck once `INTO_THE_TRANSFER` bytes have left lands
/// mid-transfer.
const SLOW_KIB_PER_SECOND: u32 = 256;
const SLOW_FILE_BYTES: usize = 4 << 20;
/// How much of the slowed file the agent's rsync has sent when each fault strikes.
const INTO_THE_TRANSFER: u64 = 512 << 10;
/// Bound on the slowed transfer getting that far (about 2 s at the limited rate).
const PROGRESS_BOUND: Duration = Duration::from_secs(30);

/// One machine running our agent against one storage daemon, with the source `data`
/// registered and backed up once.
struct Machine {
    agent: Agent,
    uuid: String,
    tree: PathBuf,
    /// A copy of the tree as the first snapshot captured it.
    first_tree: PathBuf,
    first: String,
    work: tempfile::TempDir,
}

impl Machine {
    fn backed_up_once(coordinator: &Coordinator, storage: &StorageDaemon) -> Machine {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("data");
        make_awkward_tree(&tree);
        random_file(&tree.join("small.bin"), 1, 256 << 10);
        backdate_recent(&tree);
        let agent = Agent::new(coordinator, serde_json::json!({"data": {"path": tree}}));
        agent.run_ok(&["update-config"]);
        let uuid = agent.uuid();
        coordinator.manage(&["backup-now", &uuid, "data"]);
        agent.run_ok(&["ping"]);
        let snaps = storage.snapshots(&uuid, "data");
        assert_eq!(snaps.len(), 1, "{snaps:?}");
        let first_tree = work.path().join("first");
        copy_tree(&tree, &first_tree);
        Machine {
            agent,
            uuid,
            tree,
            first_tree,
            first: snaps[0].clone(),
            work,
        }
    }

    /// The agent's rsync daemon limited to `kib_per_second`, or not limited.
    fn limit_transfer(&self, kib_per_second: Option<u32>) {
        let path = self.agent.etc.join("config.d/10-agent.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["rsyncd_command"] = match kib_per_second {
            Some(rate) => serde_json::json!(["rsync", format!("--bwlimit={rate}")]),
            None => serde_json::json!(["rsync"]),
        };
        self.agent.write_config(config);
    }

    /// Makes `data` due and starts a ping in a process group of its own (killed whole if
    /// the test fails before waiting for it), its output to a file (an agent killed
    /// outright leaves its children holding a pipe open).
    fn spawn_ping(&self, coordinator: &Coordinator) -> (ProcessGroup, PathBuf) {
        coordinator.manage(&["backup-now", &self.uuid, "data"]);
        let log = self.work.path().join(format!(
            "ping-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut command = self.agent.command(&["ping"]);
        let file = std::fs::File::create(&log).unwrap();
        command.stdout(file.try_clone().unwrap()).stderr(file);
        (ProcessGroup::spawn(command, "turku-agent ping"), log)
    }

    /// Waits (bounded) until the agent's rsync has sent `INTO_THE_TRANSFER` bytes on this
    /// ping: data is really moving, whatever the machine's load did to the start-up.
    fn wait_for_transfer_progress(&self) {
        let deadline = Instant::now() + PROGRESS_BOUND;
        loop {
            let sent = self.rsync_bytes_sent();
            if sent >= INTO_THE_TRANSFER {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent's rsync sent {sent} bytes within {PROGRESS_BOUND:?}: {:?}",
                processes_mentioning(&self.agent.tmp)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes written so far by the agent's rsync daemon and the children it forked per
    /// connection (`wchar` of `/proc/PID/io`: what went into the tunnel's socket).
    fn rsync_bytes_sent(&self) -> u64 {
        processes_mentioning(&self.agent.tmp)
            .iter()
            .filter(|(_, command)| command.contains("--daemon"))
            .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/io")).ok())
            .filter_map(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("wchar:"))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The snapshots before the fault are all still there and export equal to their trees.
    fn assert_first_snapshot_intact(&self, storage: &StorageDaemon) {
        assert_eq!(
            storage.snapshots(&self.uuid, "data"),
            std::slice::from_ref(&self.first)
        );
        let exported = storage.export(&self.uuid, "data", &self.first);
        assert_same_tree(&self.first_tree, &exported.path().join("tree"));
    }

    /// The next ping backs the whole current tree up into a second snapshot.
    fn assert_next_ping_backs_up(&self, coordinator: &Coordinator, storage: &StorageDaemon) {
        assert!(
            due(coordinator, storage, &self.uuid).contains(&"data".to_owned()),
            "the source is due again"
        );
        let out = self.agent.run_ok(&["ping"]);
        let said = stderr(&out);
        let snaps = storage.snapshots(&self.uuid, "data");
        assert_eq!(snaps.len(), 2, "{snaps:?}\n{said}");
        assert_eq!(snaps[0], self.first);
        let exported = storage.export(&self.uuid, "data", &snaps[1]);
        assert_same_tree(&self.tree, &exported.path().join("tree"));
        storage.assert_verifies_clean();
        let logs = backup_logs(coordinator, &self.uuid);
        let last = logs.last().unwrap();
        assert!(
            last.0 && last.1.as_deref() == Some(snaps[1].as_str()),
            "{logs:?}"
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {}", stderr(&out));
}

/// Waits until the storage log shows one more `Begin:` of the source than `before`.
fn wait_for_begin(storage: &StorageDaemon, before: usize) {
    eventually("the backup begins", Duration::from_secs(30), || {
        storage.log().matches("Begin: agent-test data").count() > before
    });
}

fn begins(storage: &StorageDaemon) -> usize {
    storage.log().matches("Begin: agent-test data").count()
}

fn ends(storage: &StorageDaemon) -> usize {
    storage.log().matches("End: agent-test data").count()
}

/// Whether a process may take the POSIX record lock the agent's ping holds (a lock of a
/// dead process is gone with it, whatever file it leaves).
fn ping_lock_is_free(agent: &Agent) -> bool {
    let path = agent.lock.join("turku-agent-ping.lock");
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
        return true;
    };
    let mut lock: nix::libc::flock = whole_file_lock();
    lock.l_type = nix::libc::F_WRLCK as i16;
    lock.l_whence = nix::libc::SEEK_SET as i16;
    let free = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLK(&lock)).is_ok();
    lock.l_type = nix::libc::F_UNLCK as i16;
    let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLK(&lock));
    free
}

/// A whole-file `flock` record, built field by field (the struct has no `Default`).
fn whole_file_lock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: 0,
        l_whence: 0,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[test]
fn the_storage_daemon_killed_mid_backup_restarts_clean_and_the_next_ping_backs_up() {
    let coordinator = Coordinator::start();
    let mut storage = StorageDaemon::start(
        &coordinator,
        "storage-crash",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let machine = Machine::backed_up_once(&coordinator, &storage);
    random_file(&machine.tree.join("slow.bin"), 2, SLOW_FILE_BYTES);
    backdate_recent(&machine.tree);
    machine.limit_transfer(Some(SLOW_KIB_PER_SECOND));
    let before = begins(&storage);
    let (mut ping, log) = machine.spawn_ping(&coordinator);
    wait_for_begin(&storage, before);
    machine.wait_for_transfer_progress();

    storage.kill();
    let out = ping.wait(AFTERMATH_BOUND, "the ping whose storage died");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!out.status.success(), "{said}");
    // The agent names the storage and the ssh session that broke, in its own words: ssh's
    // own line depends on what the kernel did with the bytes in flight (the connection
    // "closed by remote host", "reset by peer", a "Broken pipe").
    let own_line = said.lines().find(|l| {
        l.contains("ERROR storage storage-crash: ssh to turku-ping@127.0.0.1 port")
            && l.contains("ended")
    });
    assert!(
        own_line.is_some_and(|l| l.contains("exit status: 255")),
        "the agent says the storage's ssh session ended: {said}"
    );
    machine.agent.assert_nothing_left();

    storage.restart();
    storage.assert_verifies_clean();
    machine.assert_first_snapshot_intact(&storage);
    machine.limit_transfer(None);
    machine.assert_next_ping_backs_up(&coordinator, &storage);
}

/// The agent dies mid-backup: SIGKILL to the agent alone, or (`power_loss`) to every one of
/// its processes at once, as when the machine loses power. Nothing of it keeps running, its
/// lock is free, the storage keeps no part of the backup, and the next ping backs up.
fn agent_killed_mid_backup(power_loss: bool) {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-agent-dies",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let machine = Machine::backed_up_once(&coordinator, &storage);
    random_file(&machine.tree.join("slow.bin"), 3, SLOW_FILE_BYTES);
    backdate_recent(&machine.tree);
    machine.limit_transfer(Some(SLOW_KIB_PER_SECOND));
    let (before_begin, before_end) = (begins(&storage), ends(&storage));
    let (mut ping, log) = machine.spawn_ping(&coordinator);
    wait_for_begin(&storage, before_begin);
    machine.wait_for_transfer_progress();
    let running = processes_mentioning(&machine.agent.tmp);
    assert!(
        running.iter().any(|(_, c)| c.contains("--daemon"))
            && running
                .iter()
                .any(|(_, c)| c.contains("UserKnownHostsFile")),
        "the agent's rsync daemon and ssh run: {running:?}"
    );

    let agent_pid = Pid::from_raw(ping.id() as i32);
    if power_loss {
        killpg(agent_pid, Signal::SIGKILL).unwrap();
        for (pid, _) in &running {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    } else {
        kill(agent_pid, Signal::SIGKILL).unwrap();
    }
    let out = ping.wait(AFTERMATH_BOUND, "the killed agent");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(Signal::SIGKILL as i32)
    );

    // Nothing the agent started outlives it.
    let deadline = Instant::now() + AFTERMATH_BOUND;
    loop {
        let left = processes_mentioning(&machine.agent.tmp);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed agent's processes still run after {AFTERMATH_BOUND:?}: {left:?}\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping_lock_is_free(&machine.agent), "the ping lock is free");

    // The storage ends the session, reports the failure and keeps nothing of it.
    eventually(
        "the storage ends the session",
        Duration::from_secs(60),
        || ends(&storage) > before_end,
    );
    let logs = backup_logs(&coordinator, &machine.uuid);
    let last = logs.last().unwrap();
    assert!(!last.0 && last.1.is_none(), "{logs:?}");
    let summary = last.2.clone().unwrap_or_default();
    // How the storage meets the broken tunnel depends on the kernel: an orderly end of the
    // stream, or a reset when bytes were still unread.
    let broke_off = [
        "connection closed unexpectedly",
        "Connection reset by peer",
        "Broken pipe",
    ];
    assert!(
        summary.contains("(no snapshot was made): ")
            && broke_off.iter().any(|words| summary.contains(words)),
        "the failure says the agent's side broke off: {summary}"
    );
    storage.assert_verifies_clean();
    machine.assert_first_snapshot_intact(&storage);

    machine.limit_transfer(None);
    machine.assert_next_ping_backs_up(&coordinator, &storage);
}

#[test]
fn the_agent_alone_killed_mid_backup_leaves_no_process_and_the_next_ping_backs_up() {
    agent_killed_mid_backup(false);
}

#[test]
fn a_power_loss_mid_backup_leaves_the_storage_clean_and_the_next_ping_backs_up() {
    agent_killed_mid_backup(true);
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    })
}

/// The store's space reserve (`docs/store.md`, Full disk): the store frees and recreates
/// it itself, so it is left out of what a failed backup may not leave behind.
const SPACE_RESERVE_FILE: &str = "space.reserve";
/// What the store's files may grow by across a failed backup and the `gc` after it: the
/// index's write-ahead log and pages the failed backup's rows touched (SQLite keeps a
/// grown file), a forget line. Far below a chunk (256 KiB at least), so a leaked pack
/// cannot hide in it.
const STORE_GROWTH_SLACK: u64 = 160 << 10;

/// What a store holds on disk: its pack files' bytes, and everything it takes from the
/// disk (packs, index and its log, snapshot records, temp packs) but the space reserve.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    packs: u64,
    on_disk: u64,
}

fn footprint(store: &Path) -> Footprint {
    Footprint {
        packs: pack_files_bytes(store),
        on_disk: disk_usage(store)
            - disk_usage(&store.join(SPACE_RESERVE_FILE)).min(disk_usage(store)),
    }
}

/// One machine backed up once by a storage whose store is on a small tmpfs (dropped last,
/// after every process using it).
struct OnSmallVolume {
    machine: Machine,
    storage: StorageDaemon,
    coordinator: Coordinator,
    daemon: u32,
    volume: Tmpfs,
}

impl OnSmallVolume {
    fn set_up(mib: u32, name: &str) -> OnSmallVolume {
        let volume = Tmpfs::mount(mib);
        let coordinator = Coordinator::start();
        let storage = StorageDaemon::start(
            &coordinator,
            name,
            serde_json::json!({"store": volume.path().join("turku-store"),
                               "preserve_hard_links": true}),
        );
        let daemon = storage.pid().unwrap();
        let machine = Machine::backed_up_once(&coordinator, &storage);
        // The daemon collects after each backup, rewriting packs: nothing on disk holds
        // still until that run is over.
        eventually(
            "the daemon's GC after the first backup",
            Duration::from_secs(60),
            || storage.log().contains("gc after backups"),
        );
        OnSmallVolume {
            machine,
            storage,
            coordinator,
            daemon,
            volume,
        }
    }

    fn footprint(&self) -> Footprint {
        footprint(&self.storage.store)
    }

    /// A ping whose backup finds the disk full: the agent's output and the backup log say
    /// so, nothing of the agent stays, the daemon lives on, and the store keeps nothing of
    /// the backup: no temp pack, and once `gc` has run (the store leaves what it had
    /// packed to the next `gc`) no more than `before` on disk.
    fn assert_ping_fails_on_full_disk_leaving_nothing(&self, before: Footprint) -> String {
        let machine = &self.machine;
        self.coordinator
            .manage(&["backup-now", &machine.uuid, "data"]);
        // The storage reports the source's failure and ends the session as the original
        // does (exit 0), so the agent's exit says nothing; its output and the backup log do.
        let out = machine.agent.run(&["ping"]);
        let said = stderr(&out);
        let name = &self.storage.name;
        // A pull that fails says "(no snapshot was made)"; a commit that fails (its last
        // pack, the index, the record) says what it could not write.
        assert!(
            said.contains(&format!("{name}] ERROR: data: "))
                && said.contains("is full")
                && said.contains("No space left on device"),
            "the agent's output says the storage's disk is full: {said}"
        );
        eprintln!("the failed ping said: {said}");
        let logs = backup_logs(&self.coordinator, &machine.uuid);
        let last = logs.last().unwrap();
        let summary = last.2.clone().unwrap_or_default();
        assert!(
            !last.0 && summary.contains("is full") && summary.contains("No space left on device"),
            "the backup log says the disk is full: {logs:?}"
        );
        machine.agent.assert_nothing_left();
        assert!(alive(self.daemon), "the daemon survives the full disk");

        let temp_packs = files_under(&self.storage.store.join("tmp"));
        assert!(
            temp_packs.is_empty(),
            "the failed backup left temp packs: {temp_packs:?}"
        );
        let failed = self.footprint();
        let gc = self.storage.store_command(&["gc"]);
        assert!(
            gc.status.success(),
            "gc on the full disk: {}{}",
            String::from_utf8_lossy(&gc.stdout),
            stderr(&gc)
        );
        let after = self.footprint();
        eprintln!("gc: {}{}", String::from_utf8_lossy(&gc.stdout), stderr(&gc));
        eprintln!(
            "store before the failed backup {before:?}, after it {failed:?}, after gc {after:?}; \
             {} bytes free",
            self.volume.free_bytes()
        );
        assert!(
            after.packs <= before.packs + STORE_GROWTH_SLACK
                && after.on_disk <= before.on_disk + STORE_GROWTH_SLACK,
            "the failed backup's data stays on disk after gc: before {before:?}, after the \
             backup {failed:?}, after gc {after:?}"
        );
        self.storage.assert_verifies_clean();
        machine.assert_first_snapshot_intact(&self.storage);
        summary
    }

    /// The next ping backs the whole tree up, the same daemon serving it.
    fn assert_next_ping_backs_up(&self) {
        self.machine
            .assert_next_ping_backs_up(&self.coordinator, &self.storage);
        assert!(alive(self.daemon), "the same daemon served the next ping");
    }
}

#[test]
fn a_full_disk_while_packing_fails_the_backup_clearly_and_once_space_is_back_the_next_ping_backs_up(
) {
    let setup = OnSmallVolume::set_up(16, "storage-full");
    let before = setup.footprint();

    // More incompressible data than the volume holds: the disk runs out while packs are
    // written.
    let mut added = 0;
    for (i, seed) in (10..13).enumerate() {
        random_file(
            &setup.machine.tree.join(format!("big-{i}.bin")),
            seed,
            8 << 20,
        );
        added += 8 << 20;
    }
    backdate_recent(&setup.machine.tree);
    setup.assert_ping_fails_on_full_disk_leaving_nothing(before);

    setup.volume.resize(64);
    let freed = setup.footprint();
    setup.assert_next_ping_backs_up();
    // The new snapshot holds the added files once, on top of what stayed.
    let grown = setup.footprint().packs - freed.packs;
    assert!(
        (added..added + STORE_GROWTH_SLACK).contains(&grown),
        "the packs grew by {grown} bytes for {added} new bytes"
    );
}

/// The volume filled by a ballast file up to `free` bytes, and a backup whose new data
/// (`new_bytes`, in small files) is a little less than that, so the disk runs out
/// after the data, on what makes the snapshot (the last pack's trees, the index, the
/// snapshot's record). Then the ballast shrinks to leave just enough for the next backup.
fn disk_full_on_the_commit(free: u64, new_bytes: u64) {
    let setup = OnSmallVolume::set_up(16, "storage-brim");
    let tree = &setup.machine.tree;
    std::fs::create_dir(tree.join("new")).unwrap();
    let pieces = 4;
    for i in 0..pieces {
        random_file(
            &tree.join(format!("new/piece-{i}.bin")),
            20 + i,
            (new_bytes / pieces) as usize,
        );
    }
    std::fs::write(tree.join("small.txt"), "changed\n").unwrap();
    backdate_recent(tree);
    let before = setup.footprint();

    let ballast_path = setup.volume.path().join("ballast");
    let ballast = std::fs::File::create(&ballast_path).unwrap();
    let ballast_len = (setup.volume.free_bytes() - free) as i64;
    nix::fcntl::posix_fallocate(&ballast, 0, ballast_len).unwrap();
    eprintln!(
        "{} bytes free for {new_bytes} new bytes",
        setup.volume.free_bytes()
    );
    let summary = setup.assert_ping_fails_on_full_disk_leaving_nothing(before);
    eprintln!("the failed backup: {summary}");

    // Space back: just what the next backup needs (its data, its metadata and the
    // store's space reserve) and a little more.
    let needed = new_bytes + (4 << 20);
    let now_free = setup.volume.free_bytes();
    let shrink = needed.saturating_sub(now_free).next_multiple_of(4096);
    ballast
        .set_len((ballast_len as u64).saturating_sub(shrink))
        .unwrap();
    drop(ballast);
    eprintln!("{} bytes free again", setup.volume.free_bytes());
    setup.assert_next_ping_backs_up();
}

#[test]
fn a_disk_that_fills_up_on_the_last_64_kib_fails_the_commit_clearly_and_space_back_backs_up() {
    disk_full_on_the_commit(64 << 10, 40 << 10);
}

#[test]
fn a_disk_that_fills_up_on_the_last_mib_fails_the_commit_clearly_and_space_back_backs_up() {
    disk_full_on_the_commit(1 << 20, 960 << 10);
}
