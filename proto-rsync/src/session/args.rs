//! The argv a stock client sends to the daemon, and the filter list (spec §2.4, §4).

use crate::codec::prim::put_i32;
use crate::constants::*;
use crate::error::Error;

/// What the server is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    /// Ask for hard links (`-H`).
    pub hard_links: bool,
    /// `--numeric-ids` (no uid/gid name lists).
    pub numeric_ids: bool,
    /// Module name.
    pub module: String,
    /// Path below the module ("" for the module root).
    pub path: String,
    /// Capability letters after `-e` (only sent at protocol ≥30).
    pub client_info: String,
    /// Ask the server to use this checksum seed instead of a time-based one.
    pub checksum_seed: Option<i32>,
    /// Our I/O timeout in whole seconds, passed on so the sender keeps an idle link alive
    /// (only at protocol ≥30, where we can send keep-alives back).
    pub io_timeout: Option<u32>,
    /// Whether the server sends (`--sender`: a pull) or receives (a push).
    pub server_sends: bool,
    /// `--delete` (only meaningful in a push: the receiver deletes).
    pub delete: bool,
}

impl ServerArgs {
    pub fn pull(module: &str, path: &str, hard_links: bool) -> Self {
        ServerArgs {
            hard_links,
            numeric_ids: true,
            module: module.to_owned(),
            path: path.to_owned(),
            client_info: CLIENT_INFO_NO_INC_RECURSE.to_owned(),
            checksum_seed: None,
            io_timeout: None,
            server_sends: true,
            delete: false,
        }
    }

    /// The server receives into `module/path/` (a push). The path always ends in `/`: the
    /// list's top entry `.` is that directory, as with `rsync -a src/ rsync://h/mod/path/`.
    /// The module root goes as `module/./`, the one form openrsync's receiver accepts too.
    pub fn push(module: &str, path: &str, hard_links: bool, delete: bool) -> Self {
        let mut path = path.trim_start_matches('/').to_owned();
        if path.is_empty() {
            path.push_str(PUSH_MODULE_ROOT);
        } else if !path.ends_with('/') {
            path.push('/');
        }
        ServerArgs {
            server_sends: false,
            delete,
            ..ServerArgs::pull(module, &path, hard_links)
        }
    }

    /// Refuses a module or path that would inject lines or arguments into the daemon
    /// protocol: the module travels as a newline-ended line and the path as an argument
    /// ended by NUL (newline below protocol 30).
    pub fn check(&self) -> Result<(), Error> {
        check_protocol_text("module name", &self.module)?;
        check_protocol_text("path", &self.path)
    }

    /// The argv of `rsync -a --numeric-ids [-H] --no-inc-recursive rsync://h/mod/path`, as the
    /// server sees it (without argv[0]).
    pub fn argv(&self, protocol: u32) -> Vec<String> {
        let mut cluster = String::from(CLUSTER_LINKS);
        if self.hard_links {
            cluster.push(CLUSTER_HARD_LINKS);
        }
        cluster.push_str(CLUSTER_ARCHIVE_REST);
        if protocol >= 30 {
            // Client capabilities ride as the argument of `e`, last in the cluster.
            cluster.push(CLUSTER_CLIENT_INFO);
            cluster.push_str(&self.client_info);
        }
        let mut v = vec![ARG_SERVER.to_owned()];
        if self.server_sends {
            v.push(ARG_SENDER.to_owned());
        }
        v.push(cluster);
        // Forwarded only when the server receives: in a pull the client deletes locally.
        if self.delete && !self.server_sends {
            v.push(ARG_DELETE.to_owned());
        }
        if let Some(seed) = self.checksum_seed {
            v.push(format!("{ARG_CHECKSUM_SEED}{seed}"));
        }
        // A sender told our timeout enforces it on us, and we can keep an idle link alive
        // only with the empty data frames of protocol 30+ (our output is not multiplexed
        // below): there, a long stretch without requests would make the sender quit.
        if let Some(secs) = self.io_timeout.filter(|_| protocol >= 30) {
            v.push(format!("{ARG_TIMEOUT}{secs}"));
        }
        if self.numeric_ids {
            v.push(ARG_NUMERIC_IDS.to_owned());
        }
        v.push(ARG_DOT.to_owned());
        let path = self.path.trim_start_matches('/');
        let mut p = format!("{}/{}", self.module, path);
        if !p.ends_with('/') && path.is_empty() {
            p.push('/');
        }
        v.push(p);
        v
    }

    /// Encodes argv for the daemon: NUL-separated at ≥30, newline-separated below, ended by
    /// an empty argument.
    pub fn encode(&self, protocol: u32) -> Vec<u8> {
        let sep = if protocol >= 30 { 0u8 } else { b'\n' };
        let mut o = Vec::new();
        for a in self.argv(protocol) {
            o.extend_from_slice(a.as_bytes());
            o.push(sep);
        }
        o.push(sep);
        o
    }
}

/// Refuses text sent inside a daemon-protocol line or argument (module, path, user name)
/// when it holds a line or argument separator.
pub fn check_protocol_text(what: &'static str, value: &str) -> Result<(), Error> {
    if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(Error::BadArgument {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Encodes a filter list: each rule (`"- *.tmp"`, `"+ dir/"`, …) as int32 length + text,
/// then int32 0.
pub fn encode_filter_list(rules: &[String], out: &mut Vec<u8>) {
    for r in rules.iter().filter(|r| !r.is_empty()) {
        put_i32(out, r.len() as i32);
        out.extend_from_slice(r.as_bytes());
    }
    put_i32(out, 0);
}

/// The rule for an exclude pattern.
pub fn exclude_rule(pattern: &str) -> String {
    format!("{FILTER_EXCLUDE_PREFIX}{pattern}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_matches_stock() {
        let a = ServerArgs::pull("mod", "", false);
        assert_eq!(
            a.argv(32),
            [
                "--server",
                "--sender",
                "-logDtpre.LsfxCIvu",
                "--numeric-ids",
                ".",
                "mod/"
            ]
        );
        let a = ServerArgs::pull("mod", "sub/dir/", true);
        assert_eq!(
            a.argv(31),
            [
                "--server",
                "--sender",
                "-lHogDtpre.LsfxCIvu",
                "--numeric-ids",
                ".",
                "mod/sub/dir/"
            ]
        );
        assert_eq!(a.argv(29)[2], "-lHogDtpr");
        let timed = ServerArgs {
            io_timeout: Some(600),
            ..ServerArgs::pull("m", "", false)
        };
        assert_eq!(timed.argv(32)[3..5], ["--timeout=600", "--numeric-ids"]);
        assert_eq!(
            ServerArgs::pull("m", "", false).encode(32),
            b"--server\0--sender\0-logDtpre.LsfxCIvu\0--numeric-ids\0.\0m/\0\0"
        );
    }

    /// Below protocol 30 we cannot send keep-alives, so a sender must not be told to time
    /// us out: an unchanged tree (no requests for a long time) would end the run.
    #[test]
    fn timeout_is_passed_on_only_where_we_can_keep_the_link_alive() {
        let timed = ServerArgs {
            io_timeout: Some(600),
            ..ServerArgs::pull("m", "", false)
        };
        let has_timeout = |protocol: u32| {
            let sent = timed.encode(protocol);
            let sent = String::from_utf8_lossy(&sent).into_owned();
            sent.contains("--timeout=600")
        };
        for protocol in 27..=29 {
            assert!(!has_timeout(protocol), "protocol {protocol}");
            assert!(!timed
                .argv(protocol)
                .iter()
                .any(|a| a.starts_with("--timeout")));
        }
        for protocol in 30..=32 {
            assert!(has_timeout(protocol), "protocol {protocol}");
        }
        assert_eq!(
            timed.encode(29),
            b"--server\n--sender\n-logDtpr\n--numeric-ids\n.\nm/\n\n"
        );
        assert_eq!(
            timed.encode(31),
            b"--server\0--sender\0-logDtpre.LsfxCIvu\0--timeout=600\0--numeric-ids\0.\0m/\0\0"
        );
    }

    /// The argv stock 3.5.0 sends for `rsync -a --numeric-ids [--delete] src/
    /// rsync://h/mod/./` with `--no-inc-recursive` (spec §2.4).
    #[test]
    fn push_argv_matches_stock() {
        assert_eq!(
            ServerArgs::push("mod", "", false, true).argv(32),
            [
                "--server",
                "-logDtpre.LsfxCIvu",
                "--delete",
                "--numeric-ids",
                ".",
                "mod/./"
            ]
        );
        // openrsync (protocol 29) cannot receive into a bare `mod/`.
        for path in ["", "/"] {
            assert_eq!(
                ServerArgs::push("mod", path, false, false).encode(29),
                b"--server\n-logDtpr\n--numeric-ids\n.\nmod/./\n\n"
            );
        }
        assert_eq!(
            ServerArgs::push("mod", "sub/dir", true, false).argv(30),
            [
                "--server",
                "-lHogDtpre.LsfxCIvu",
                "--numeric-ids",
                ".",
                "mod/sub/dir/"
            ]
        );
    }

    #[test]
    fn separators_in_names_are_refused() {
        assert!(ServerArgs::pull("mod", "sub/dir", false).check().is_ok());
        for (m, p) in [("mo\nd", ""), ("mod", "a\0b"), ("mod", "x\ny"), ("m\r", "")] {
            assert!(matches!(
                ServerArgs::pull(m, p, false).check(),
                Err(Error::BadArgument { .. })
            ));
        }
    }

    #[test]
    fn filter_list_encoding() {
        let mut o = Vec::new();
        encode_filter_list(&[exclude_rule("*.bin")], &mut o);
        assert_eq!(o, b"\x07\0\0\0- *.bin\0\0\0\0");
        let mut o = Vec::new();
        encode_filter_list(&[], &mut o);
        assert_eq!(o, [0, 0, 0, 0]);
    }
}
