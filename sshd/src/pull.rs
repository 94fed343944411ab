//! The store-backed rsync receiver: pulls a tree from a stock rsync daemon into a snapshot.
//!
//! For each regular file: same size and mtime as in the previous snapshot of the source →
//! reuse its chunks and request nothing; otherwise the previous version (if any) is the rsync
//! basis, read from the store, and the reconstructed content streams into the chunker.
//! Nothing is committed unless the pull succeeds (exit 0, or 24: files vanished).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use turku_proto_rsync::io::{pull, pull_tcp, PullConfig};
use turku_proto_rsync::{
    Basis, EntryAction, FileEntry, FileKind, HardLink, Limits, MessageKind, Outcome, ReceiveSink,
    Secret, SinkError, Timeouts,
};
use turku_store::{
    link_group_for, ChunkRef, EntryData, EntryKind, FileReader, Metadata, Snapshot, SnapshotWriter,
    Store,
};

use crate::constants::{
    BASIS_SPILL_FACTOR, BASIS_SPILL_SLACK, MAX_PASSWORD_FILE_BYTES, MAX_REASONS_SHOWN,
    RSYNC_DEFAULT_PORT,
};
use crate::throttle::Paced;

/// Where to pull from: `rsync://[USER@]HOST[:PORT]/MODULE[/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    pub module: String,
    pub path: String,
}

impl RsyncUrl {
    pub fn parse(url: &str) -> Result<RsyncUrl> {
        let rest = url
            .strip_prefix("rsync://")
            .with_context(|| format!("{url:?} is not an rsync:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').context("unclosed [ in host")?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().with_context(|| format!("bad port {p:?}"))?,
            None => RSYNC_DEFAULT_PORT,
        };
        let path = path.trim_end_matches('/');
        let (module, sub) = path.split_once('/').unwrap_or((path, ""));
        if host.is_empty() || module.is_empty() {
            bail!("{url:?}: expected rsync://[USER@]HOST[:PORT]/MODULE/");
        }
        Ok(RsyncUrl {
            user,
            host,
            port,
            module: module.to_string(),
            path: sub.to_string(),
        })
    }
}

/// The Turku source's filter and exclude lists as rsync filter rules, as the original
/// storage writes its merge file: filters first (local merges dropped), then `- PATTERN`.
pub fn turku_filter_rules(filters: &[String], excludes: &[String]) -> Vec<String> {
    filters
        .iter()
        .filter(|f| !(f.starts_with("merge") || f.starts_with(':')))
        .cloned()
        .chain(excludes.iter().map(|e| format!("- {e}")))
        .collect()
}

/// A previous version of a file, read from the store, as the rsync basis.
///
/// The sender chooses which basis blocks to reference. A stock sender references them
/// mostly in order, so each stored chunk is fetched about once; a sender that jumps between
/// chunks (a hostile one, or a reordered VM image) would make every 4-byte token cost a
/// whole chunk's read, decompression and hash. Once the chunks fetched pass a multiple of
/// the basis size (`BASIS_SPILL_FACTOR`, `BASIS_SPILL_SLACK`), the basis is copied once, in
/// order, to an unnamed file beside the store's packs and read from there: the work stays
/// bounded by our own data, whatever the sender does, and the backup still completes.
pub struct StoreBasis {
    reader: FileReader,
    spill_after: u64,
    spill_dir: PathBuf,
    spilled: Option<std::fs::File>,
}

// By hand: the store reader and the spill file have nothing worth printing.
impl std::fmt::Debug for StoreBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBasis")
            .field("spill_after", &self.spill_after)
            .field("spilled", &self.spilled.is_some())
            .finish_non_exhaustive()
    }
}

impl StoreBasis {
    fn new(reader: FileReader, store: &Store) -> Self {
        Self {
            spill_after: reader
                .size()
                .saturating_mul(BASIS_SPILL_FACTOR)
                .saturating_add(BASIS_SPILL_SLACK),
            spill_dir: store.path().join(turku_store::format::TMP_DIR),
            spilled: None,
            reader,
        }
    }

    /// Copies the whole basis, in order, to an unnamed temporary file.
    fn spill(&mut self) -> Result<(), SinkError> {
        let mut file = tempfile::tempfile_in(&self.spill_dir)?;
        self.reader.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut self.reader, &mut file)?;
        tracing::info!(
            "basis of {} bytes read out of order: copied to a temporary file after fetching {} bytes",
            self.reader.size(),
            self.reader.loaded_bytes()
        );
        self.spilled = Some(file);
        Ok(())
    }
}

impl Basis for StoreBasis {
    fn len(&self) -> u64 {
        self.reader.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SinkError> {
        if self.spilled.is_none() && self.reader.loaded_bytes() > self.spill_after {
            self.spill()?;
        }
        if let Some(file) = &self.spilled {
            return Ok(file.read_exact_at(buf, offset)?);
        }
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .reader
                .read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err("read past the end of the basis".into());
            }
            done += n;
        }
        Ok(())
    }
}

struct Follower {
    path: Vec<u8>,
    meta: Metadata,
    leader: u32,
}

/// Receives into a [`SnapshotWriter`].
pub struct StoreSink {
    store: Store,
    writer: SnapshotWriter,
    /// Chunks and link group of each hard-link leader, by sorted index.
    leaders: HashMap<u32, (u64, Vec<ChunkRef>)>,
    followers: Vec<Follower>,
    pub warnings: Vec<String>,
}

fn meta_of(e: &FileEntry) -> Metadata {
    Metadata {
        perm: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        mtime_sec: e.mtime,
        mtime_nsec: e.mtime_nsec.min(999_999_999),
    }
}

/// The path inside the snapshot; `.` is the transfer's root.
fn path_of(e: &FileEntry) -> &[u8] {
    if e.name == b"." {
        b""
    } else {
        e.name.strip_prefix(b"./").unwrap_or(&e.name)
    }
}

// By hand: the store and the snapshot writer have nothing worth printing.
impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSink")
            .field("leaders", &self.leaders.len())
            .field("followers", &self.followers.len())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl StoreSink {
    pub fn new(store: &Store, machine: &str, source: &str) -> Result<StoreSink> {
        Ok(StoreSink {
            store: store.clone(),
            writer: store.begin_snapshot(machine, source)?,
            leaders: HashMap::new(),
            followers: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Derived from the leader's path (not its index) so unchanged trees keep their ids.
    fn group_of(e: &FileEntry) -> u64 {
        match e.hard_link {
            HardLink::Leader => link_group_for(path_of(e)),
            _ => 0,
        }
    }

    /// Links followers to their leaders and commits the snapshot.
    pub fn commit(mut self) -> Result<Snapshot> {
        for f in std::mem::take(&mut self.followers) {
            match self.leaders.get(&f.leader) {
                Some((group, chunks)) => {
                    self.writer
                        .add_file_with_chunks(&f.path, f.meta, *group, chunks.clone())?
                }
                None => self.warnings.push(format!(
                    "{}: hard-link leader was not received",
                    String::from_utf8_lossy(&f.path)
                )),
            }
        }
        Ok(self.writer.commit()?)
    }
}

impl ReceiveSink for StoreSink {
    type Basis = StoreBasis;

    fn entry(&mut self, ndx: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        let path = path_of(e).to_vec();
        let meta = meta_of(e);
        let kind = e.kind();
        match kind {
            FileKind::Directory => self.writer.add_dir(&path, meta)?,
            FileKind::Symlink => {
                let target = e.symlink.as_deref().unwrap_or_default();
                self.writer.add_symlink(&path, meta, target)?;
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo | FileKind::Socket => {
                let (major, minor) = e.rdev.unwrap_or((0, 0));
                let kind = match kind {
                    FileKind::CharDevice => EntryKind::CharDevice,
                    FileKind::BlockDevice => EntryKind::BlockDevice,
                    FileKind::Fifo => EntryKind::Fifo,
                    _ => EntryKind::Socket,
                };
                let rdev = turku_store::make_dev(u64::from(major), u64::from(minor));
                self.writer.add_special(&path, kind, meta, rdev)?;
            }
            FileKind::Regular => {
                if let HardLink::Follower { first } = e.hard_link {
                    self.followers.push(Follower {
                        path,
                        meta,
                        leader: first,
                    });
                    return Ok(EntryAction::Skip);
                }
                let size = u64::try_from(e.size).map_err(|_| "negative file size")?;
                let group = Self::group_of(e);
                if self.writer.reuse_unchanged(&path, meta, size, group)? {
                    if group != 0 {
                        if let Some(EntryData::File { chunks, .. }) =
                            self.writer.base_entry(&path)?.map(|b| b.data)
                        {
                            self.leaders.insert(ndx, (group, chunks));
                        }
                    }
                    return Ok(EntryAction::Skip);
                }
                return Ok(EntryAction::Transfer);
            }
        }
        Ok(EntryAction::Skip)
    }

    fn basis(&mut self, _ndx: u32, e: &FileEntry) -> Result<Option<StoreBasis>, SinkError> {
        Ok(match self.writer.base_entry(path_of(e))? {
            Some(entry) if entry.kind == EntryKind::File && entry.file_size() > 0 => {
                Some(StoreBasis::new(self.store.open_file(&entry)?, &self.store))
            }
            _ => None,
        })
    }

    fn begin_content(&mut self, _ndx: u32, e: &FileEntry) -> Result<(), SinkError> {
        let group = Self::group_of(e);
        self.writer.begin_file(path_of(e), meta_of(e), group)?;
        Ok(())
    }

    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.writer.write_file(data)?;
        Ok(())
    }

    fn end_content(&mut self, ndx: u32, e: &FileEntry, verified: bool) -> Result<(), SinkError> {
        if verified {
            let chunks = self.writer.finish_file()?;
            if e.hard_link == HardLink::Leader {
                self.leaders.insert(ndx, (Self::group_of(e), chunks));
            }
        } else {
            self.writer.discard_file();
        }
        Ok(())
    }

    fn file_failed(&mut self, _ndx: u32, e: &FileEntry, reason: &str) -> Result<(), SinkError> {
        let msg = format!("{}: {reason}", e.name_lossy());
        tracing::warn!("file not received: {msg}");
        self.warnings.push(msg);
        Ok(())
    }

    fn message(&mut self, kind: MessageKind, text: &str) {
        match kind {
            MessageKind::Info => tracing::info!(target: "rsync", "{}", text.trim_end()),
            _ => {
                tracing::warn!(target: "rsync", "{}", text.trim_end());
                self.warnings.push(text.trim_end().to_string());
            }
        }
    }
}

/// The password an rsync client would use: the first line of a password file, without its
/// line ending, as stock `rsync --password-file` reads it.
///
/// Refused like stock refuses it: a file others may read or write. Stricter than stock, a
/// file open to its group is refused too: the storage unit has no reason to share it, and a
/// group member could then pull any machine's data. Anything but a regular file is refused
/// without waiting on it: a FIFO's open would otherwise block until some writer came.
///
/// A symlink is followed, as stock follows it, and judged by its target: the path is the
/// operator's, whoever can plant a link there could as well replace the file, and secret
/// mounts (Kubernetes, some configuration tools) hand out symlinks.
pub fn read_password_file(path: &Path) -> Result<Secret> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking so a FIFO or device opens at once and is refused below; regular files
    // read the same either way.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Checked on the open file, so a swap after the check cannot change what is read.
    let meta = file
        .metadata()
        .with_context(|| format!("reading the status of {}", path.display()))?;
    if !meta.is_file() {
        bail!("password file {} is not a regular file", path.display());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "password file {} must not be accessible by group or others (mode {:04o}); \
             run chmod 600 on it",
            path.display(),
            mode & 0o7777
        );
    }
    let mut text = Vec::new();
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        bail!(
            "password file {} is larger than {MAX_PASSWORD_FILE_BYTES} bytes",
            path.display()
        );
    }
    // Like stock: the first run of bytes up to a line feed or carriage return (blank
    // leading lines skipped), so a file written on Windows works too.
    match text
        .split(|&b| b == b'\n' || b == b'\r')
        .find(|line| !line.is_empty())
    {
        Some(line) => Ok(Secret::new(line.to_vec())),
        None => bail!("password file {} holds no password", path.display()),
    }
}

/// How to pull, besides where from and into what.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Redacted in `Debug`.
    pub password: Option<Secret>,
    pub hard_links: bool,
    pub filter_rules: Vec<String>,
    pub timeouts: Timeouts,
    /// Bounds on what the daemon may make us hold or redo (file-list bytes, rebuilt bytes
    /// per file, messages kept): the agent's daemon is not trusted.
    pub limits: Limits,
    /// Bytes per second read from the daemon at most (the source's `bwlimit`).
    pub bwlimit: Option<u64>,
}

/// A byte stream to an rsync daemon that is already connected: the daemon's SSH tunnel
/// hands the pull one end of an in-memory pipe whose other end it copies to the
/// forwarded channel, so the pull's own runtime never owns the SSH channel.
pub trait DaemonStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> DaemonStream for T {}

/// How the pull reaches the rsync daemon.
pub enum Connection {
    /// Connect to `url`'s host and port.
    Tcp,
    /// Speak to the daemon over this stream; `url`'s host and port only name it in errors.
    Stream(Box<dyn DaemonStream>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Tcp => "Tcp",
            Connection::Stream(_) => "Stream",
        })
    }
}

/// Pulls `url` into a new snapshot of `machine`/`source`, over `connection`.
pub fn pull_into_store(
    store: &Store,
    machine: &str,
    source: &str,
    url: &RsyncUrl,
    connection: Connection,
    options: PullOptions,
) -> Result<(Snapshot, Outcome, Vec<String>)> {
    let mut config = PullConfig::new(&url.module);
    config.path = url.path.clone();
    if let Some(user) = &url.user {
        config.user = user.clone();
    }
    config.password = options.password;
    config.hard_links = options.hard_links;
    config.filter_rules = options.filter_rules;
    config.timeouts = options.timeouts;
    config.limits = options.limits;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let mut sink = StoreSink::new(store, machine, source)?;
    let bwlimit = options.bwlimit;
    let transfer = async {
        match (connection, bwlimit) {
            (Connection::Tcp, None) => pull_tcp(&url.host, url.port, &config, &mut sink).await,
            (Connection::Tcp, Some(rate)) => {
                let connect = tokio::net::TcpStream::connect((url.host.as_str(), url.port));
                let stream = match config.timeouts.connect {
                    Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                        turku_proto_rsync::Error::from(turku_proto_rsync::Timeout::Connect(limit))
                    })??,
                    None => connect.await?,
                };
                pull(Paced::new(stream, rate), &config, &mut sink).await
            }
            (Connection::Stream(stream), None) => pull(stream, &config, &mut sink).await,
            (Connection::Stream(stream), Some(rate)) => {
                pull(Paced::new(stream, rate), &config, &mut sink).await
            }
        }
    };
    let outcome = runtime.block_on(transfer).with_context(|| {
        format!(
            "pulling rsync://{}:{}/{} (no snapshot was made)",
            url.host, url.port, url.module
        )
    })?;
    if !outcome.is_success() {
        // The peer's own words say why (permission denied, I/O error...).
        let reasons: Vec<&str> = outcome
            .warnings
            .iter()
            .map(String::as_str)
            .take(MAX_REASONS_SHOWN)
            .collect();
        bail!(
            "rsync transfer incomplete (exit code {}): failed: {}; {}; no snapshot was made",
            outcome.exit_code,
            outcome.failed.join(", "),
            reasons.join("; ")
        );
    }
    let mut warnings = std::mem::take(&mut sink.warnings);
    let snap = sink.commit()?;
    warnings.extend(outcome.warnings.iter().cloned());
    Ok((snap, outcome, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Block references that jump between stored chunks would make every small read fetch
    /// a whole chunk: past its budget the basis is copied once to a temporary file, so the
    /// chunks fetched stay bounded by the basis size and every read still returns the right
    /// bytes. Reading in order fetches each chunk once and never spills.
    #[test]
    fn a_basis_read_out_of_order_is_copied_once_and_its_fetches_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let size = 6 * 1024 * 1024;
        let content = pseudo_random(size);
        std::fs::write(src.join("f"), &content).unwrap();
        let store = Store::init(&dir.path().join("store"), Default::default()).unwrap();
        let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
        let entry = store.lookup(&snap, b"f").unwrap();
        let EntryData::File { chunks, .. } = &entry.data else {
            panic!("not a file: {entry:?}");
        };
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        let last_chunk_at = size as u64 - u64::from(chunks[chunks.len() - 1].len);
        let mut block = vec![0u8; 700];

        let mut in_order = StoreBasis::new(store.open_file(&entry).unwrap(), &store);
        for offset in (0..size as u64 - 700).step_by(700) {
            in_order.read_at(offset, &mut block).unwrap();
        }
        assert_eq!(in_order.reader.loaded_bytes(), size as u64);
        assert!(in_order.spilled.is_none());

        let mut jumping = StoreBasis::new(store.open_file(&entry).unwrap(), &store);
        let spill_after = jumping.spill_after;
        for reads in 0..100_000u64 {
            let offset = if reads.is_multiple_of(2) {
                0
            } else {
                last_chunk_at
            } + reads % 1000;
            jumping.read_at(offset, &mut block).unwrap();
            let at = offset as usize;
            assert_eq!(block, content[at..at + 700], "read {reads} at {offset}");
        }
        assert!(jumping.spilled.is_some());
        // What was fetched before the copy, one more chunk, and the copy itself.
        let bound = spill_after + 4 * 1024 * 1024 + size as u64;
        assert!(
            jumping.reader.loaded_bytes() <= bound,
            "{}",
            jumping.reader.loaded_bytes()
        );
    }

    #[test]
    fn urls_parse() {
        let u = RsyncUrl::parse("rsync://alice@127.0.0.1:8873/etc/").unwrap();
        assert_eq!(
            u,
            RsyncUrl {
                user: Some("alice".into()),
                host: "127.0.0.1".into(),
                port: 8873,
                module: "etc".into(),
                path: String::new()
            }
        );
        let u = RsyncUrl::parse("rsync://host/mod/sub/dir/").unwrap();
        assert_eq!(
            (u.port, u.module.as_str(), u.path.as_str()),
            (873, "mod", "sub/dir")
        );
        let u = RsyncUrl::parse("rsync://[::1]:99/m").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 99));
        assert!(RsyncUrl::parse("http://x/m").is_err());
        assert!(RsyncUrl::parse("rsync://host/").is_err());
        assert!(RsyncUrl::parse("rsync://host:notaport/m").is_err());
    }

    fn password_file(dir: &Path, name: &str, text: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn password_file_open_to_others_or_group_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (mode, name) in [(0o644, "world"), (0o604, "other-only"), (0o640, "group")] {
            let p = password_file(tmp.path(), name, b"pw\n", mode);
            let e = read_password_file(&p).unwrap_err().to_string();
            assert!(
                e.contains("must not be accessible by group or others"),
                "{mode:o}: {e}"
            );
        }
        let p = password_file(tmp.path(), "private", b"pw\n", 0o600);
        assert_eq!(read_password_file(&p).unwrap().expose(), b"pw");
        let p = password_file(tmp.path(), "read-only", b"pw\n", 0o400);
        assert_eq!(read_password_file(&p).unwrap().expose(), b"pw");
    }

    #[test]
    fn password_file_is_read_only_up_to_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let mut big = b"pw\n".to_vec();
        big.resize(MAX_PASSWORD_FILE_BYTES as usize + 1, b'x');
        let p = password_file(tmp.path(), "big", &big, 0o600);
        let e = read_password_file(&p).unwrap_err().to_string();
        assert!(e.contains("larger than 4096 bytes"), "{e}");
        big.truncate(MAX_PASSWORD_FILE_BYTES as usize);
        let p = password_file(tmp.path(), "at-bound", &big, 0o600);
        assert_eq!(read_password_file(&p).unwrap().expose(), b"pw");
        assert!(read_password_file(&tmp.path().join("missing")).is_err());
        assert!(read_password_file(tmp.path()).is_err(), "a directory");
    }

    #[test]
    fn password_is_the_first_line_without_cr_or_lf() {
        let tmp = tempfile::tempdir().unwrap();
        for (text, want) in [
            (&b"s3cret\r\n"[..], &b"s3cret"[..]),
            (b"s3cret\r", b"s3cret"),
            (b"s3cret", b"s3cret"),
            (b"s3cret\nsecond line\n", b"s3cret"),
            (b"\r\n\ns3cret\n", b"s3cret"),
            (b"with space \n", b"with space "),
        ] {
            let p = password_file(tmp.path(), "pw", text, 0o600);
            assert_eq!(read_password_file(&p).unwrap().expose(), want, "{text:?}");
        }
        let p = password_file(tmp.path(), "empty", b"\n\r\n", 0o600);
        assert!(read_password_file(&p).is_err());
    }

    #[test]
    fn pull_options_debug_hides_the_password() {
        let options = PullOptions {
            password: Some(Secret::new(b"Qv7-hidden".to_vec())),
            ..PullOptions::default()
        };
        let shown = format!("{options:?} {options:#?}");
        let as_list = format!("{:?}", b"Qv7-hidden".to_vec());
        assert!(!shown.contains("Qv7-hidden"), "{shown}");
        assert!(!shown.contains(&as_list[1..as_list.len() - 1]), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn filter_rules_follow_the_original() {
        let rules = turku_filter_rules(
            &[
                "- *.tmp".into(),
                "merge /etc/evil".into(),
                ": .rsync-filter".into(),
                "+ keep/".into(),
            ],
            &["cache".into()],
        );
        assert_eq!(rules, vec!["- *.tmp", "+ keep/", "- cache"]);
    }
}
