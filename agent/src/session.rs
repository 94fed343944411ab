//! What one storage session is made of, built without I/O: the private rsync daemon's
//! config and secrets, the pinned known_hosts, the rsync daemon's and ssh's argv, the request
//! on ssh's stdin, the grouping of due sources by storage and the restore-mode text.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};
use turku_api_types::v1::StorageEndpoint;

use crate::reply::ReturnedSources;

use crate::constants::ping::{
    ACTION_CHECKIN, ACTION_RESTORE, REMOTE_COMMAND, REQUEST_END, RSYNCD_GLOBAL_SECTION,
    RSYNCD_NO_SYMLINK_MUNGING, SSH_DEFAULT_PORT,
};

/// A name or path that cannot be written into rsyncd.conf without changing its meaning.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("source name {0:?} cannot be an rsync module name (no brackets, slashes, `%`, control characters, outer blanks, a trailing backslash or the name `global`)")]
    BadModuleName(String),
    #[error("path {0:?} cannot go into rsyncd.conf (`%`, control characters, outer blanks or a trailing backslash)")]
    BadPath(String),
    #[error("path {0:?} cannot be given to ssh (it expands `${{...}}` in file names and has no escape for it; control characters and non-UTF-8 names are refused too)")]
    BadSshPath(String),
}

/// One module of the private daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: String,
    pub user: String,
    pub password: String,
    pub read_only: bool,
}

/// Where the daemon runs and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings<'a> {
    pub address: &'a str,
    pub port: u16,
    /// rsyncd.conf `uid`/`gid`; empty leaves the line out.
    pub user: &'a str,
    pub group: &'a str,
    /// A daemon not run by root can neither switch users nor chroot: it gets no `uid`/`gid`
    /// lines (given them it refuses every connection) and `use chroot = no`.
    pub as_root: bool,
    pub log_file: &'a Path,
    pub secrets_file: &'a Path,
}

/// Text rsyncd.conf reads back as written: a trailing backslash continues the line onto the
/// next one and rsync expands `%VAR%` in values.
fn is_plain(text: &str) -> bool {
    !text.chars().any(char::is_control)
        && text.trim() == text
        && !text.is_empty()
        && !text.ends_with('\\')
        && !text.contains('%')
}

/// Refuses names rsyncd.conf would read differently (a `]` ends the header, a newline
/// starts a new line, `[global]` is the global section) or rsync clients could not address.
pub fn check_module_name(name: &str) -> Result<(), SessionError> {
    if !is_plain(name)
        || name.contains(['[', ']', '/'])
        || name.eq_ignore_ascii_case(RSYNCD_GLOBAL_SECTION)
    {
        return Err(SessionError::BadModuleName(name.to_owned()));
    }
    Ok(())
}

/// One source as the daemon would serve it: checked on its own so that a bad one is skipped
/// and reported without costing the other sources of its storage their backup.
pub fn check_source(name: &str, path: &str) -> Result<(), SessionError> {
    check_module_name(name)?;
    check_path(path)
}

/// The daemon's config: the global settings, then one module block per module.
pub fn rsyncd_conf(
    daemon: &DaemonSettings<'_>,
    modules: &[Module],
) -> Result<String, SessionError> {
    for path in [daemon.log_file, daemon.secrets_file] {
        check_path(&path.display().to_string())?;
    }
    let mut conf = format!(
        "address = {}\nport = {}\nlog file = {}\n",
        daemon.address,
        daemon.port,
        daemon.log_file.display()
    );
    if daemon.as_root {
        if !daemon.user.is_empty() {
            conf.push_str(&format!("uid = {}\n", daemon.user));
        }
        if !daemon.group.is_empty() {
            conf.push_str(&format!("gid = {}\n", daemon.group));
        }
    } else {
        conf.push_str("use chroot = no\n");
    }
    conf.push_str("list = false\n\n");
    for module in modules {
        check_module_name(&module.name)?;
        check_path(&module.path)?;
        conf.push_str(&format!(
            "[{}]\n    path = {}\n    auth users = {}\n    secrets file = {}\n    read only = {}\n",
            module.name,
            module.path,
            module.user,
            daemon.secrets_file.display(),
            module.read_only
        ));
        // Without chroot rsync munges the symlinks a writable module receives (a safety
        // for untrusted uploads); a restore must put them back exactly as backed up.
        if !daemon.as_root && !module.read_only {
            conf.push_str(RSYNCD_NO_SYMLINK_MUNGING);
        }
        conf.push('\n');
    }
    Ok(conf)
}

fn check_path(path: &str) -> Result<(), SessionError> {
    if !is_plain(path) {
        return Err(SessionError::BadPath(path.to_owned()));
    }
    Ok(())
}

/// The secrets file: `user:password` per module.
pub fn rsyncd_secrets(modules: &[Module]) -> String {
    modules
        .iter()
        .map(|m| format!("{}:{}\n", m.user, m.password))
        .collect()
}

/// `rsync --no-detach --daemon --config=<conf>` after the configured prefix (a fresh argv
/// for every session: the original appended to its config list, so a second storage's
/// daemon got the first one's arguments too, B6).
pub fn rsyncd_argv(prefix: &[String], conf: &Path) -> Vec<String> {
    let mut argv = prefix.to_vec();
    argv.push("--no-detach".into());
    argv.push("--daemon".into());
    argv.push(format!("--config={}", conf.display()));
    argv
}

/// The storage's pinned host keys. OpenSSH looks a non-22 port up as `[host]:port` (B7).
pub fn known_hosts(storage: &StorageEndpoint) -> String {
    let host = if storage.ssh_ping_port == SSH_DEFAULT_PORT {
        storage.ssh_ping_host.clone()
    } else {
        format!("[{}]:{}", storage.ssh_ping_host, storage.ssh_ping_port)
    };
    storage
        .ssh_ping_host_keys
        .iter()
        .map(|key| format!("{host} {}\n", key.trim()))
        .collect()
}

/// A file name as ssh reads it back after its own expansions: ssh expands `%x` tokens and
/// `${VAR}` in known_hosts and identity file names (whether from `-o` or a config file)
/// and `~` at their start. `%` is written `%%`; a relative name gets `./` so that no
/// leading `~` (or a name `none`) is taken for something else; `${` has no escape.
fn ssh_file_name(path: &Path) -> Result<String, SessionError> {
    let refused = || SessionError::BadSshPath(path.display().to_string());
    let text = path.to_str().ok_or_else(refused)?;
    if text.is_empty() || text.contains("${") || text.chars().any(char::is_control) {
        return Err(refused());
    }
    let anchored = if path.is_absolute() {
        text.to_owned()
    } else {
        format!("./{text}")
    };
    Ok(anchored.replace('%', "%%"))
}

/// The value of an `-o` option that names a file: ssh splits such values into words at
/// blanks and takes quotes and backslashes as its config file does (OpenSSH's `argv_split`:
/// inside double quotes `\"` and `\\` stand for `"` and `\`, any other backslash is kept),
/// so a blank or quote in `TMPDIR` would otherwise change the option's meaning.
fn ssh_option_file_value(path: &Path) -> Result<String, SessionError> {
    let name = ssh_file_name(path)?;
    Ok(format!(
        "\"{}\"",
        name.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The original's ssh command line after the configured prefix, fresh for each session (B6).
/// Fails only for file names ssh cannot be given at all ([`ssh_file_name`]).
pub fn ssh_argv(
    prefix: &[String],
    known_hosts: &Path,
    private_key: &Path,
    local_address: &str,
    port: u16,
    storage: &StorageEndpoint,
) -> Result<Vec<String>, SessionError> {
    let mut argv = prefix.to_vec();
    argv.extend([
        "-T".to_owned(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", ssh_option_file_value(known_hosts)?),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "CheckHostIP=no".into(),
        // Not `-i`: ssh checks that file before expanding `%` in its name, and drops it
        // when the unexpanded name does not exist.
        "-o".into(),
        format!("IdentityFile={}", ssh_option_file_value(private_key)?),
        "-R".into(),
        format!("{port}:{local_address}:{port}"),
        "-p".into(),
        storage.ssh_ping_port.to_string(),
        "-l".into(),
        storage.ssh_ping_user.clone(),
        storage.ssh_ping_host.clone(),
        REMOTE_COMMAND.into(),
    ]);
    Ok(argv)
}

/// The backup request: JSON (as Python's `json.dumps` writes it), then a `.` line.
pub fn checkin_request(port: u16, modules: &[Module]) -> String {
    let sources: Map<String, Value> = modules
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                json!({"username": m.user, "password": m.password}),
            )
        })
        .collect();
    let request =
        json!({"verbose": true, "action": ACTION_CHECKIN, "port": port, "sources": sources});
    frame(&request)
}

/// The restore request: no sources.
pub fn restore_request(port: u16) -> String {
    frame(&json!({"verbose": true, "action": ACTION_RESTORE, "port": port}))
}

fn frame(request: &Value) -> String {
    // serde_json keeps insertion order only with preserve_order; key order does not matter
    // to the storage, the Python spacing is kept for logs that compare by eye.
    let text = turku_api_types::pyjson::to_string(request).unwrap_or_else(|_| request.to_string());
    format!("{text}\n{REQUEST_END}\n")
}

/// The sources the coordinator returned that also exist locally, grouped by storage name
/// (each group with the storage endpoint of its first source).
pub fn group_by_storage(
    returned: &ReturnedSources,
    is_local: impl Fn(&str) -> bool,
) -> BTreeMap<String, (&StorageEndpoint, Vec<String>)> {
    let mut groups: BTreeMap<String, (&StorageEndpoint, Vec<String>)> = BTreeMap::new();
    for (name, source) in returned {
        if !is_local(name) {
            continue;
        }
        groups
            .entry(source.storage.name.clone())
            .or_insert_with(|| (&source.storage, Vec::new()))
            .1
            .push(name.clone());
    }
    groups
}

/// What restore mode shows the operator.
#[derive(Debug, Clone)]
pub struct RestoreText<'a> {
    pub machine_uuid: &'a str,
    pub environment_name: Option<&'a Value>,
    pub service_name: Option<&'a Value>,
    pub unit_name: Option<&'a Value>,
    pub storage: &'a str,
    pub sources: &'a [String],
    pub restore_path: &'a Path,
    pub restore_module: &'a str,
    pub default_module: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub port: u16,
}

fn shown(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The lines restore mode prints: the original's, then the one command per source the
/// operator runs on the storage unit with our storage daemon.
pub fn restore_instructions(t: &RestoreText<'_>) -> Vec<String> {
    let mut lines = vec![format!("Machine UUID: {}", t.machine_uuid)];
    for (label, value) in [
        ("Machine environment", t.environment_name),
        ("Machine service", t.service_name),
        ("Machine unit", t.unit_name),
    ] {
        if let Some(v) = shown(value) {
            lines.push(format!("{label}: {v}"));
        }
    }
    lines.push(format!("Storage unit: {}", t.storage));
    lines.push(format!(
        "Local destination path: {}",
        t.restore_path.display()
    ));
    lines.push("Restore from the storage unit (turku-storage), one command per source:".into());
    let module = if t.restore_module == t.default_module {
        String::new()
    } else {
        format!(" --module {}", t.restore_module)
    };
    for source in t.sources {
        lines.push(format!(
            "    RSYNC_PASSWORD={} turku-storage restore --machine {} --source {} --user {}{module}",
            t.password, t.machine_uuid, source, t.user
        ));
    }
    lines.push(
        "  (add --snapshot NAME for another snapshot than the newest, --path SUB for a part of it)"
            .into(),
    );
    lines.push("Sample restore usage from an original turku-storage unit:".into());
    lines.push(format!(
        "    cd /var/lib/turku-storage/machines/{}/",
        t.machine_uuid
    ));
    lines.push(format!(
        "    RSYNC_PASSWORD={} rsync -avzP --numeric-ids ${{P?}}/ rsync://{}@127.0.0.1:{}/{}/",
        t.password, t.user, t.port, t.restore_module
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn storage(name: &str, port: u16) -> StorageEndpoint {
        StorageEndpoint {
            name: name.into(),
            ssh_ping_host: "backup.example.com".into(),
            ssh_ping_host_keys: vec![
                "ssh-ed25519 AAAAC3 root@b\n".into(),
                "ssh-rsa AAAAB3".into(),
            ],
            ssh_ping_port: port,
            ssh_ping_user: "turku".into(),
        }
    }

    fn module(name: &str) -> Module {
        Module {
            name: name.into(),
            path: format!("/srv/{name}"),
            user: format!("user-{name}"),
            password: format!("pw-{name}"),
            read_only: true,
        }
    }

    fn daemon(as_root: bool) -> DaemonSettings<'static> {
        DaemonSettings {
            address: "127.0.0.1",
            port: 50000,
            user: "root",
            group: "*",
            as_root,
            log_file: Path::new("/tmp/d/rsyncd.log"),
            secrets_file: Path::new("/tmp/d/rsyncd.secrets"),
        }
    }

    #[test]
    fn rsyncd_conf_as_root_is_the_originals() {
        let conf = rsyncd_conf(&daemon(true), &[module("etc"), module("home")]).unwrap();
        assert_eq!(
            conf,
            "address = 127.0.0.1\nport = 50000\nlog file = /tmp/d/rsyncd.log\nuid = root\ngid = *\nlist = false\n\n\
             [etc]\n    path = /srv/etc\n    auth users = user-etc\n    secrets file = /tmp/d/rsyncd.secrets\n    read only = true\n\n\
             [home]\n    path = /srv/home\n    auth users = user-home\n    secrets file = /tmp/d/rsyncd.secrets\n    read only = true\n\n"
        );
        assert_eq!(
            rsyncd_secrets(&[module("etc"), module("home")]),
            "user-etc:pw-etc\nuser-home:pw-home\n"
        );
    }

    #[test]
    fn rsyncd_conf_as_a_user_has_no_uid_gid_and_no_chroot() {
        let conf = rsyncd_conf(&daemon(false), &[module("etc")]).unwrap();
        assert!(!conf.contains("uid") && !conf.contains("gid"), "{conf}");
        assert!(conf.contains("use chroot = no\n"), "{conf}");
        let mut root_empty = daemon(true);
        root_empty.user = "";
        root_empty.group = "";
        let conf = rsyncd_conf(&root_empty, &[]).unwrap();
        assert!(!conf.contains("uid") && !conf.contains("gid"), "{conf}");
    }

    #[test]
    fn a_restore_module_of_a_user_daemon_keeps_symlinks_as_they_are() {
        let mut restore = module("turku-restore");
        restore.read_only = false;
        let conf = rsyncd_conf(&daemon(false), &[restore.clone()]).unwrap();
        assert!(
            conf.contains("    read only = false\n    munge symlinks = no\n"),
            "{conf}"
        );
        // Backups only read, and root chroots: neither needs it.
        let conf = rsyncd_conf(&daemon(false), &[module("etc")]).unwrap();
        assert!(!conf.contains("munge"), "{conf}");
        let conf = rsyncd_conf(&daemon(true), &[restore]).unwrap();
        assert!(!conf.contains("munge"), "{conf}");
    }

    #[test]
    fn hostile_names_and_paths_are_refused() {
        for name in [
            "a]b", "a\nb", " a", "", "a/b", "[x", "db\\", "50%", "global", "GLOBAL",
        ] {
            let e = rsyncd_conf(&daemon(true), &[module(name)]).unwrap_err();
            assert!(matches!(e, SessionError::BadModuleName(_)), "{name:?}");
            assert!(check_source(name, "/srv").is_err(), "{name:?}");
        }
        for path in ["/srv\n[evil]", "/srv\\", "/srv/%HOME%", " /srv"] {
            let mut m = module("ok");
            m.path = path.into();
            assert!(
                matches!(
                    rsyncd_conf(&daemon(true), &[m]),
                    Err(SessionError::BadPath(_))
                ),
                "{path:?}"
            );
            assert!(check_source("ok", path).is_err(), "{path:?}");
        }
        assert_eq!(check_source("global-db", "/srv/a b"), Ok(()));
    }

    #[test]
    fn known_hosts_brackets_non_default_ports() {
        assert_eq!(
            known_hosts(&storage("s", 22)),
            "backup.example.com ssh-ed25519 AAAAC3 root@b\nbackup.example.com ssh-rsa AAAAB3\n"
        );
        assert_eq!(
            known_hosts(&storage("s", 2222)),
            "[backup.example.com]:2222 ssh-ed25519 AAAAC3 root@b\n[backup.example.com]:2222 ssh-rsa AAAAB3\n"
        );
    }

    #[test]
    fn argv_is_fresh_for_every_session() {
        let prefix = vec!["ssh".to_owned(), "-v".to_owned()];
        let a = ssh_argv(
            &prefix,
            Path::new("/t/kh1"),
            Path::new("/v/ssh_key"),
            "127.0.0.1",
            50001,
            &storage("a", 22),
        )
        .unwrap();
        let b = ssh_argv(
            &prefix,
            Path::new("/t/kh2"),
            Path::new("/v/ssh_key"),
            "127.0.0.1",
            50002,
            &storage("b", 2222),
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "ssh",
                "-v",
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "UserKnownHostsFile=\"/t/kh1\"",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "CheckHostIP=no",
                "-o",
                "IdentityFile=\"/v/ssh_key\"",
                "-R",
                "50001:127.0.0.1:50001",
                "-p",
                "22",
                "-l",
                "turku",
                "backup.example.com",
                "turku-ping-remote"
            ]
        );
        assert_eq!(b.len(), a.len());
        assert!(
            b.contains(&"UserKnownHostsFile=\"/t/kh2\"".to_owned())
                && !b.iter().any(|w| w.contains("kh1"))
        );
        assert_eq!(prefix.len(), 2);
        let r = rsyncd_argv(&["rsync".into()], Path::new("/t/rsyncd.conf"));
        assert_eq!(
            r,
            [
                "rsync",
                "--no-detach",
                "--daemon",
                "--config=/t/rsyncd.conf"
            ]
        );
    }

    #[test]
    fn file_names_reach_ssh_as_written() {
        let argv = ssh_argv(
            &[],
            Path::new("/tmp/a b\"c'd\\e%f/known_hosts"),
            Path::new("var dir/%h/ssh_key"),
            "127.0.0.1",
            50001,
            &storage("a", 22),
        )
        .unwrap();
        assert_eq!(
            argv[4],
            "UserKnownHostsFile=\"/tmp/a b\\\"c'd\\\\e%%f/known_hosts\""
        );
        assert_eq!(argv[10], "IdentityFile=\"./var dir/%%h/ssh_key\"");
        for bad in ["/tmp/${HOME}/kh", "/tmp/a\nb/kh", ""] {
            assert!(
                matches!(
                    ssh_argv(
                        &[],
                        Path::new(bad),
                        Path::new("/k"),
                        "::1",
                        1,
                        &storage("a", 22)
                    ),
                    Err(SessionError::BadSshPath(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requests_are_json_and_a_dot_line() {
        let text = checkin_request(50000, &[module("etc")]);
        let (json_line, rest) = text.split_once('\n').unwrap();
        assert_eq!(rest, ".\n");
        let v: Value = serde_json::from_str(json_line).unwrap();
        assert_eq!(
            v,
            json!({"verbose": true, "action": "checkin", "port": 50000,
                   "sources": {"etc": {"username": "user-etc", "password": "pw-etc"}}})
        );
        let v: Value =
            serde_json::from_str(restore_request(50001).lines().next().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"verbose": true, "action": "restore", "port": 50001})
        );
    }

    fn scheduled(storage: StorageEndpoint) -> crate::reply::ReturnedSource {
        crate::reply::ReturnedSource { storage }
    }

    #[test]
    fn due_sources_group_by_storage_and_unknown_ones_are_dropped() {
        let returned: ReturnedSources = [
            ("a1".to_owned(), scheduled(storage("A", 22))),
            ("b1".to_owned(), scheduled(storage("B", 2222))),
            ("a2".to_owned(), scheduled(storage("A", 22))),
            ("gone".to_owned(), scheduled(storage("C", 22))),
        ]
        .into_iter()
        .collect();
        let groups = group_by_storage(&returned, |n| n != "gone");
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(groups["A"].1, ["a1", "a2"]);
        assert_eq!(groups["B"].0.ssh_ping_port, 2222);
    }

    #[test]
    fn restore_text_names_the_one_command_per_source() {
        let sources = vec!["etc".to_owned(), "home".to_owned()];
        let unit = json!("web-0");
        let path = PathBuf::from("/var/backups/turku-agent/restore");
        let text = RestoreText {
            machine_uuid: "9bef0a75-5a9b-43f7-a66a-7e8c6d7ad91d",
            environment_name: None,
            service_name: Some(&Value::Null),
            unit_name: Some(&unit),
            storage: "primary",
            sources: &sources,
            restore_path: &path,
            restore_module: "turku-restore",
            default_module: "turku-restore",
            user: "e908212b-e35f-453e-9503-0de047ee9e22",
            password: "RNxHVnnl2zt33ktbkccT",
            port: 64951,
        };
        let lines = restore_instructions(&text);
        assert_eq!(
            lines[0],
            "Machine UUID: 9bef0a75-5a9b-43f7-a66a-7e8c6d7ad91d"
        );
        assert_eq!(lines[1], "Machine unit: web-0");
        assert!(lines.contains(&"Storage unit: primary".to_owned()));
        assert!(
            lines.contains(&"Local destination path: /var/backups/turku-agent/restore".to_owned())
        );
        for source in &sources {
            let want = format!(
                "    RSYNC_PASSWORD=RNxHVnnl2zt33ktbkccT turku-storage restore --machine \
                 9bef0a75-5a9b-43f7-a66a-7e8c6d7ad91d --source {source} --user e908212b-e35f-453e-9503-0de047ee9e22"
            );
            assert!(lines.contains(&want), "{lines:#?}");
        }
        assert!(lines
            .iter()
            .any(|l| l.contains("--snapshot NAME") && l.contains("--path SUB")));
        assert!(lines.contains(&"    RSYNC_PASSWORD=RNxHVnnl2zt33ktbkccT rsync -avzP --numeric-ids ${P?}/ rsync://e908212b-e35f-453e-9503-0de047ee9e22@127.0.0.1:64951/turku-restore/".to_owned()));
        let custom = RestoreText {
            restore_module: "mine",
            ..text
        };
        assert!(restore_instructions(&custom)
            .iter()
            .any(|l| l.ends_with("--module mine")));
    }
}
