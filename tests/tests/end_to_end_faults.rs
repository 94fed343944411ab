//! Faults across the whole system, every program a separate process on 127.0.0.1: the
//! coordinator (`turku-api serve`), the storage daemon (`turku-storage serve`), our agent
//! (`turku-agent`) with the stock `rsync --daemon` and stock `ssh` it starts. Each fault
//! must leave the store clean, lose no snapshot, say clearly what happened, and leave the
//! source due so the next ping backs it up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use turku_testkit::system::{
    backup_logs, due, eventually, stderr, wait_bounded, Agent, Coordinator, StorageDaemon,
};
use turku_testkit::{assert_same_tree, backdate_recent, make_awkward_tree, random_file};

/// Bound on an interrupted ping ending, and on what it leaves behind going away.
const AFTERMATH_BOUND: Duration = Duration::from_secs(20);
/// The slowed transfer: this many KiB/s through the agent's rsync daemon, so a 4 MiB file
/// takes about 16 s and a fault two seconds in lands mid-transfer.
const SLOW_KIB_PER_SECOND: u32 = 256;
const SLOW_FILE_BYTES: usize = 4 << 20;
/// How long into the slowed transfer each fault strikes.
const INTO_THE_TRANSFER: Duration = Duration::from_secs(2);

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

    /// Makes `data` due and starts a ping, its output to a file (an agent killed outright
    /// leaves its children holding a pipe open); in its own process group when `own_group`.
    fn spawn_ping(&self, coordinator: &Coordinator, own_group: bool) -> (Child, PathBuf) {
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
        if own_group {
            command.process_group(0);
        }
        (command.spawn().unwrap(), log)
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

/// Live processes whose command line mentions the agent's private TMPDIR: its rsync
/// daemon (and the children it forked per connection) and its ssh, whose options name
/// the session's config files there. With their command lines.
fn agent_processes(agent: &Agent) -> Vec<(u32, String)> {
    let needle = agent.tmp.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A zombie has an empty command line: it runs nothing any more.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push((pid, text));
        }
    }
    found
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
    let (ping, log) = machine.spawn_ping(&coordinator, false);
    wait_for_begin(&storage, before);
    std::thread::sleep(INTO_THE_TRANSFER);

    storage.kill();
    let out = wait_bounded(ping, AFTERMATH_BOUND, "the ping whose storage died");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!out.status.success(), "{said}");
    // The agent names the storage and the ssh session that broke.
    assert!(
        said.contains("Connection to 127.0.0.1 closed by remote host.")
            && said.contains("ERROR storage storage-crash: ssh to turku-ping@127.0.0.1 port")
            && said.contains("ended with exit status: 255"),
        "{said}"
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
    let (ping, log) = machine.spawn_ping(&coordinator, power_loss);
    wait_for_begin(&storage, before_begin);
    std::thread::sleep(INTO_THE_TRANSFER);
    let running = agent_processes(&machine.agent);
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
    let out = wait_bounded(ping, AFTERMATH_BOUND, "the killed agent");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(Signal::SIGKILL as i32)
    );

    // Nothing the agent started outlives it.
    let deadline = Instant::now() + AFTERMATH_BOUND;
    loop {
        let left = agent_processes(&machine.agent);
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
    assert!(
        summary.contains("(no snapshot was made): connection closed unexpectedly"),
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

/// A tmpfs of a given size, unmounted (lazily when busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        assert!(
            turku_testkit::is_root(),
            "this test mounts a small tmpfs to fill the disk and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", stderr(&out));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, mib: u32) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "remount tmpfs: {}", stderr(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    })
}

#[test]
fn a_full_disk_fails_the_backup_clearly_and_once_space_is_back_the_next_ping_backs_up() {
    let volume = Tmpfs::mount(16);
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-full",
        serde_json::json!({"store": volume.path().join("turku-store"),
                           "preserve_hard_links": true}),
    );
    let daemon = storage.pid().unwrap();
    let machine = Machine::backed_up_once(&coordinator, &storage);

    // More incompressible data than the volume holds.
    for (i, seed) in (10..13).enumerate() {
        random_file(&machine.tree.join(format!("big-{i}.bin")), seed, 8 << 20);
    }
    backdate_recent(&machine.tree);
    coordinator.manage(&["backup-now", &machine.uuid, "data"]);
    // The storage reports the source's failure and ends the session as the original does
    // (exit 0), so the agent's exit says nothing; its output and the backup log do.
    let out = machine.agent.run(&["ping"]);
    let said = stderr(&out);
    eprintln!("{said}");
    assert!(
        said.contains("storage-full] ERROR: data: pulling rsync://")
            && said.contains("(no snapshot was made)")
            && said.contains("is full")
            && said.contains("No space left on device"),
        "the agent's output says the storage's disk is full: {said}"
    );
    let logs = backup_logs(&coordinator, &machine.uuid);
    let last = logs.last().unwrap();
    let summary = last.2.clone().unwrap_or_default();
    assert!(
        !last.0 && summary.contains("is full") && summary.contains("No space left on device"),
        "the backup log says the disk is full: {logs:?}"
    );
    machine.agent.assert_nothing_left();
    assert!(alive(daemon), "the daemon survives the full disk");
    storage.assert_verifies_clean();
    machine.assert_first_snapshot_intact(&storage);

    volume.resize(64);
    machine.assert_next_ping_backs_up(&coordinator, &storage);
    assert_eq!(storage.pid(), Some(daemon));
    assert!(alive(daemon), "the same daemon served the next ping");
}
