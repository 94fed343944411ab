//! `./quickstart.sh`, the README's first command, run as a newcomer would: the whole system
//! on a small tree, twice on one data dir, interrupted by Ctrl-C, and after a run killed with
//! -9. It uses the workspace's binaries (`TURKU_BIN_DIR`) instead of building its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use turku_testkit::system::{
    processes_mentioning, turku_agent_binary, turku_api_binary, turku_storage_binary, wait_bounded,
};
use turku_testkit::{
    assert_rsync_sees_no_difference, backdate_recent, make_awkward_tree, random_file,
};

/// Bound on one whole run of the script on the small tree (debug binaries, loaded machine).
const RUN_BOUND: Duration = Duration::from_secs(120);
/// Bound on the script's own cleanup after a signal.
const STOP_BOUND: Duration = Duration::from_secs(40);
/// Bound on processes dying after the script's exit (the parent-death signal is async).
const LEFTOVER_BOUND: Duration = Duration::from_secs(5);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../quickstart.sh")
}

/// One folder holding the three workspace binaries, as `TURKU_BIN_DIR` wants them.
fn bin_dir(work: &Path) -> PathBuf {
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for binary in [
        turku_api_binary(),
        turku_storage_binary(),
        turku_agent_binary(),
    ] {
        std::os::unix::fs::symlink(&binary, dir.join(binary.file_name().unwrap())).unwrap();
    }
    dir
}

/// A bin dir like [`bin_dir`] whose `turku-storage` is a shell wrapper: `prelude` (bash) runs
/// first, then the real program with the same arguments. Lets a test steer the storage's
/// clock or make a start fail without touching the script.
fn wrapped_bin_dir(work: &Path, prelude: &str) -> PathBuf {
    let dir = work.join("wrapped-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for binary in [turku_api_binary(), turku_agent_binary()] {
        std::os::unix::fs::symlink(&binary, dir.join(binary.file_name().unwrap())).unwrap();
    }
    let wrapper = dir.join("turku-storage");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n{prelude}\nexec {:?} \"$@\"\n",
            turku_storage_binary()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The two snapshot names a run reports on its `done: snapshots A and B made` line.
fn reported_snapshots(text: &str) -> (String, String) {
    let line = text
        .lines()
        .find_map(|l| l.split("done: snapshots ").nth(1))
        .unwrap_or_else(|| panic!("no done line\n{text}"));
    let mut words = line.split(' ');
    let first = words.next().unwrap().to_owned();
    assert_eq!(words.next(), Some("and"), "{text}");
    (first, words.next().unwrap().to_owned())
}

/// A tree with every kind of entry and names, backdated so a restore within the same second
/// still carries the recorded mtimes.
fn source_tree(work: &Path) -> PathBuf {
    let tree = work.join("source");
    make_awkward_tree(&tree);
    random_file(&tree.join("more.bin"), 7, 512 * 1024);
    backdate_recent(&tree);
    tree
}

fn quickstart(bin: &Path, data: &Path, source: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(script())
        .arg("--data")
        .arg(data)
        .arg(source)
        .env("TURKU_BIN_DIR", bin)
        .env_remove("TURKU_DATA")
        .env_remove("TURKU_STORE")
        .env_remove("RSYNC_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(bin: &Path, data: &Path, source: &Path) -> (Output, String) {
    let out = wait_bounded(
        quickstart(bin, data, source).spawn().unwrap(),
        RUN_BOUND,
        "quickstart.sh",
    );
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Snapshot names the store holds (the `snapshots` listing's third column).
fn snapshots(data: &Path) -> Vec<String> {
    let out = Command::new(turku_storage_binary())
        .arg("--store")
        .arg(data.join("storage/store"))
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap().to_owned())
        .collect()
}

/// A test's own folder with the three binaries, the source tree and a data dir whose
/// leftover processes are killed when the test ends (the guard goes before the folder).
struct Setup {
    work: tempfile::TempDir,
    bin: PathBuf,
    source: PathBuf,
    data: PathBuf,
    _guard: KillLeftovers,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let bin = bin_dir(work.path());
    let source = source_tree(work.path());
    let data = work.path().join("data");
    Setup {
        bin,
        source,
        _guard: KillLeftovers(data.clone()),
        data,
        work,
    }
}

/// Kills (SIGKILL) whatever still mentions the data dir when a test ends, passed or failed,
/// so a failing run cannot leave daemons on the machine.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Nothing mentions the data dir any more, within a few seconds: the agent's children die
/// through the parent-death signal, after their parent.
fn assert_nothing_left(data: &Path, output: &str) {
    let deadline = Instant::now() + LEFTOVER_BOUND;
    let mut left = processes_mentioning(data);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = processes_mentioning(data);
    }
    assert!(
        left.is_empty(),
        "processes left behind: {left:#?}\n{output}"
    );
}

/// The restore the run reports (`verified in DIR`) equals the source to stock rsync.
fn assert_restore_equals(source: &Path, text: &str) {
    let restored = text
        .lines()
        .find_map(|l| l.split(" verified in ").nth(1))
        .unwrap_or_else(|| panic!("no restore reported\n{text}"));
    assert!(Path::new(restored).is_dir(), "{restored}\n{text}");
    assert_rsync_sees_no_difference(source, Path::new(restored));
}

/// The data dir, its logs (restore mode's holds the restore password) and run files are the
/// user's alone.
fn assert_private(data: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut paths = vec![data.to_owned()];
    for dir in ["logs", "run"] {
        paths.push(data.join(dir));
        for entry in std::fs::read_dir(data.join(dir)).unwrap() {
            paths.push(entry.unwrap().path());
        }
    }
    assert!(
        paths.iter().any(|p| p.ends_with("restore-mode.log")),
        "{paths:?}"
    );
    for path in paths {
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
}

/// The script started in its own process group (as a shell starts a foreground job), its
/// stdout lines arriving on the receiver.
fn start_in_own_group(bin: &Path, data: &Path, source: &Path) -> (Child, Receiver<String>) {
    let mut child = quickstart(bin, data, source)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (bounded) for a line containing `needle`; returns the lines read so far.
fn wait_for_line(rx: &Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + RUN_BOUND;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!(
                "no line with {needle:?} ({e}); output:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn wait_exit(mut child: Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            panic!("quickstart.sh did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn quickstart_backs_up_twice_restores_verified_and_a_second_run_adds_snapshots() {
    let Setup {
        work: _work,
        bin,
        source,
        data,
        _guard,
    } = setup();

    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "first run: {:?}\n{text}", out.status);
    let first = snapshots(&data);
    assert_eq!(first.len(), 2, "{first:?}\n{text}");
    for name in &first {
        assert!(text.contains(name.as_str()), "{name} not reported\n{text}");
    }
    assert_restore_equals(&source, &text);
    assert!(text.contains("reused every file"), "{text}");
    assert!(
        text.contains("turku-storage") && text.contains(" serve"),
        "{text}"
    );
    assert_nothing_left(&data, &text);
    assert_private(&data);
    // Git ignores the data dir, in a checkout or not.
    assert_eq!(
        std::fs::read_to_string(data.join(".gitignore")).unwrap(),
        "*\n"
    );

    // Again on the same data dir: same coordinator, registrations, machine and store; two
    // more snapshots, the old ones kept.
    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "second run: {:?}\n{text}", out.status);
    assert!(text.contains("reusing the registration secrets"), "{text}");
    let second = snapshots(&data);
    assert_eq!(second.len(), 4, "{second:?}\n{text}");
    assert_eq!(second[..2], first[..]);
    assert_restore_equals(&source, &text);
    assert_nothing_left(&data, &text);
}

#[test]
fn ctrl_c_during_the_backup_leaves_no_process_behind() {
    let Setup {
        work: _work,
        bin,
        source,
        data,
        _guard,
    } = setup();

    let (child, rx) = start_in_own_group(&bin, &data, &source);
    wait_for_line(&rx, "backup: turku-agent ping");
    // The agent is in its backup once the storage's session began.
    let storage_log = data.join("logs/storage.log");
    let deadline = Instant::now() + RUN_BOUND;
    while !std::fs::read_to_string(&storage_log)
        .unwrap_or_default()
        .contains("Begin:")
    {
        assert!(Instant::now() < deadline, "no backup session began");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A terminal's Ctrl-C: SIGINT to the whole foreground process group.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_exit(child, STOP_BOUND);
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_nothing_left(&data, "");
    let out = Command::new(turku_storage_binary())
        .arg("--store")
        .arg(data.join("storage/store"))
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the store after Ctrl-C: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_run_killed_with_sigkill_does_not_break_the_next_run() {
    let Setup {
        work: _work,
        bin,
        source,
        data,
        _guard,
    } = setup();

    let (child, rx) = start_in_own_group(&bin, &data, &source);
    wait_for_line(&rx, "backup: turku-agent ping");
    // Only the script dies: its coordinator, storage daemon and agent run on, orphaned.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_exit(child, STOP_BOUND);
    assert!(
        !processes_mentioning(&data).is_empty(),
        "the killed run left nothing running: the test shows nothing"
    );

    let (out, text) = run(&bin, &data, &source);
    assert!(
        out.status.success(),
        "the next run: {:?}\n{text}",
        out.status
    );
    assert!(
        text.contains("ending processes left by an earlier run"),
        "{text}"
    );
    assert!(text.contains("restore verified"), "{text}");
    assert_nothing_left(&data, &text);
}

#[test]
fn a_rerun_days_later_reports_the_new_snapshots_though_retention_deleted_old_ones() {
    let work = tempfile::tempdir().unwrap();
    let clock = work.path().join("clock");
    // The storage's clock stands still (both backups of a run in one second: names then
    // differ only by their random suffix) and jumps 40 days between the runs (retention,
    // "last 5 days, earliest of month", then deletes one of the first run's snapshots).
    let bin = wrapped_bin_dir(work.path(), &format!("export TURKU_CLOCK_FILE={clock:?}"));
    let source = source_tree(work.path());
    let data = work.path().join("data");
    let _guard = KillLeftovers(data.clone());

    std::fs::write(&clock, "2024-03-01T10:00:00Z").unwrap();
    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "first run: {:?}\n{text}", out.status);
    let first = snapshots(&data);
    assert_eq!(first.len(), 2, "{first:?}\n{text}");
    let (a, b) = reported_snapshots(&text);
    assert_ne!(a, b, "the run reported one snapshot twice\n{text}");
    assert_eq!(
        [a, b].iter().collect::<std::collections::BTreeSet<_>>(),
        first.iter().collect(),
        "{text}"
    );

    std::fs::write(&clock, "2024-04-10T10:00:00Z").unwrap();
    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "second run: {:?}\n{text}", out.status);
    let second = snapshots(&data);
    assert!(
        first.iter().any(|name| !second.contains(name)),
        "retention deleted nothing, the test shows nothing: {second:?}\n{text}"
    );
    let (c, d) = reported_snapshots(&text);
    assert_ne!(c, d, "{text}");
    for name in [&c, &d] {
        assert!(
            second.contains(name),
            "{name} not in the store {second:?}\n{text}"
        );
        assert!(!first.contains(name), "{name} is the first run's\n{text}");
    }
}

#[test]
fn a_rerun_retries_another_port_when_the_storage_loses_the_bind_race() {
    let work = tempfile::tempdir().unwrap();
    let lose = work.path().join("lose-next-bind");
    // The first `serve` after the flag appears fails as a lost race for the port would.
    let bin = wrapped_bin_dir(
        work.path(),
        &format!(
            "if [ \"${{@: -1}}\" = serve ] && rm {lose:?} 2>/dev/null; then\n\
             echo 'Error: binding 127.0.0.1: Address already in use (os error 98)' >&2; exit 1; fi"
        ),
    );
    let source = source_tree(work.path());
    let data = work.path().join("data");
    let _guard = KillLeftovers(data.clone());

    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "first run: {:?}\n{text}", out.status);
    assert!(!text.contains("trying another"), "{text}");

    // The first run's log says "listening on": the rerun must not take that for its own.
    std::fs::write(&lose, "").unwrap();
    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "second run: {:?}\n{text}", out.status);
    assert!(!lose.exists(), "the wrapper never ran serve\n{text}");
    assert!(text.contains("trying another"), "{text}");
    assert!(text.contains("restore verified"), "{text}");
    // This run's logs hold this run only.
    assert_eq!(
        std::fs::read_to_string(data.join("logs/storage.log"))
            .unwrap()
            .matches("listening on")
            .count(),
        1
    );
}

#[test]
fn a_data_dir_with_a_blank_and_a_quote_works() {
    let work = tempfile::tempdir().unwrap();
    let bin = bin_dir(work.path());
    let source = source_tree(work.path());
    // ssh splits an `-o UserKnownHostsFile=` value at blanks and takes quotes as its config
    // file does: the agent's files must not land under such a path.
    let data = work.path().join("my \"data's\"");
    let _guard = KillLeftovers(data.clone());

    let (out, text) = run(&bin, &data, &source);
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(text.contains("restore verified"), "{text}");
    assert_eq!(snapshots(&data).len(), 2, "{text}");
    assert_nothing_left(&data, &text);
    // The link the agent saw the data dir through, kept for the by-hand commands.
    let alias = std::fs::read_to_string(data.join("run/agent-alias")).unwrap();
    std::fs::remove_dir_all(alias.trim_end()).unwrap();
}

#[test]
fn many_differences_after_the_restore_are_explained_not_cut_short() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    // After the real restore, thousands of strays in the restore dir: a listing far longer
    // than a pipe holds.
    let bin = wrapped_bin_dir(
        work.path(),
        &format!(
            "if [[ \" $* \" == *\" restore \"* ]]; then\n\
             {:?} \"$@\" || exit\n\
             for d in {:?}/restores/*/; do for i in $(seq 3000); do\n\
             : >\"$d/a-stray-file-with-a-rather-long-name-that-was-not-backed-up-$i\"; done; done\n\
             exit 0; fi",
            turku_storage_binary(),
            data
        ),
    );
    let source = source_tree(work.path());
    let _guard = KillLeftovers(data.clone());

    let (out, text) = run(&bin, &data, &source);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("differs from"), "{text}");
    assert!(text.contains("a-stray-file"), "{text}");
    assert_nothing_left(&data, &text);
}

/// A process of the user's own that mentions the data dir, named as one of ours.
fn by_hand_process(work: &Path, name: &str, mention: &Path) -> Child {
    let dir = work.join("by-hand");
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join(name);
    std::fs::write(&program, "#!/bin/sh\nsleep 120\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // No inherited stdio: its `sleep` outlives the killed `sh` and would hold the test
    // harness's output pipe (cargo waits for it) for two minutes.
    Command::new(&program)
        .arg(mention)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_caller_with_cdpath_hooks_ssh_settings_and_by_hand_processes_is_not_disturbed() {
    let Setup {
        work,
        bin,
        source: _source,
        data,
        _guard,
    } = setup();
    // The user's by-hand commands (as the script prints them) mention the data dir.
    let mut by_hand = by_hand_process(work.path(), "rsync", &data.join("restores"));
    // ssh as the agent runs it: its arguments and environment noted, then the real one.
    let ssh_dir = work.path().join("ssh-wrapper");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let ssh_log = work.path().join("ssh.log");
    std::fs::write(
        ssh_dir.join("ssh"),
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$*\" \"agent socket: ${{SSH_AUTH_SOCK-none}}\" >>{ssh_log:?}\n\
             exec /usr/bin/ssh \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(ssh_dir.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let garbled_clock = work.path().join("clock");
    std::fs::write(&garbled_clock, "not a time").unwrap();

    // Relative paths with an exported CDPATH (cd then prints where it went), and the
    // programs' test hooks and overrides set.
    let out = wait_bounded(
        quickstart(&bin, Path::new("data"), Path::new("source"))
            .current_dir(work.path())
            .env("CDPATH", work.path())
            .env("TURKU_CLOCK_FILE", &garbled_clock)
            .env("TURKU_STORE", work.path().join("no-store"))
            .env("TURKU_API_TIME_ZONE", "Nowhere/Nothing")
            .env("SSH_AUTH_SOCK", work.path().join("agent.sock"))
            .env(
                "PATH",
                format!("{}:{}", ssh_dir.display(), std::env::var("PATH").unwrap()),
            )
            .spawn()
            .unwrap(),
        RUN_BOUND,
        "quickstart.sh",
    );
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert_restore_equals(&work.path().join("source"), &text);
    assert!(
        by_hand.try_wait().unwrap().is_none(),
        "the user's own process was ended\n{text}"
    );
    by_hand.kill().unwrap();
    by_hand.wait().unwrap();
    let ssh_calls = std::fs::read_to_string(&ssh_log).unwrap();
    assert!(
        ssh_calls.contains("-F /dev/null -o IdentitiesOnly=yes "),
        "{ssh_calls}"
    );
    assert!(!ssh_calls.contains("agent socket: /"), "{ssh_calls}");
    assert_nothing_left(&data, &text);
}

#[test]
fn a_run_killed_with_sigkill_during_the_build_leaves_no_compiler_to_the_next_run() {
    let Setup {
        work,
        bin,
        source,
        data,
        _guard,
    } = setup();
    // A cargo that builds for ever, through a compiler of its own.
    let fake = work.path().join("fake-cargo");
    std::fs::create_dir_all(&fake).unwrap();
    let pids = work.path().join("build-pids");
    std::fs::write(
        fake.join("cargo"),
        format!("#!/bin/bash\nsleep 300 &\necho $$ $! >{pids:?}\nwait\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(fake.join("cargo"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut building = quickstart(&bin, &data, &source);
    building
        .env_remove("TURKU_BIN_DIR")
        .env(
            "PATH",
            format!("{}:{}", fake.display(), std::env::var("PATH").unwrap()),
        )
        .env("CARGO_TARGET_DIR", work.path().join("target"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = building.spawn().unwrap();
    let deadline = Instant::now() + RUN_BOUND;
    while std::fs::read_to_string(&pids).map_or(true, |t| t.split_whitespace().count() < 2) {
        assert!(Instant::now() < deadline, "the fake build never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Only the script dies; the build's group runs on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_exit(child, STOP_BOUND);
    let build: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap().starts_with('Z'))
    };
    assert!(
        build.iter().all(|&pid| alive(pid)),
        "the build died with the script"
    );
    let _build_guard = KillPids(build.clone());

    let (out, text) = run(&bin, &data, &source);
    assert!(
        out.status.success(),
        "the next run: {:?}\n{text}",
        out.status
    );
    assert!(
        text.contains("ending processes left by an earlier run"),
        "{text}"
    );
    let deadline = Instant::now() + LEFTOVER_BOUND;
    while build.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !build.iter().any(|&pid| alive(pid)),
        "the killed run's build still runs\n{text}"
    );
}

/// SIGKILLs the given processes when a test ends, so a failing test leaves none behind.
struct KillPids(Vec<i32>);

impl Drop for KillPids {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // Only while the pid is still the fake build's (a pid may be reused).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if !cmdline.contains("fake-cargo") && !cmdline.starts_with("sleep") {
                continue;
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
