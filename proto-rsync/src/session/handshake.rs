//! Client side of the daemon handshake and session setup (spec §2, §3.1–§3.2): greeting,
//! module, authentication, argv, compat flags, checksum negotiation, seed.

use super::args::ServerArgs;
use crate::checksum::{choose_checksum, ChecksumKind};
use crate::codec::handshake::{
    auth_response, classify_line, decode_line, parse_greeting, AuthDigest, Greeting, ServerLine,
};
use crate::codec::prim::{put_vstring, run, Decoded};
use crate::config::Secret;
use crate::constants::*;
use crate::error::Error;
use crate::limits::Limits;

/// Inputs of the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    pub args: ServerArgs,
    /// Highest protocol to announce (27–32); lower values force an older session.
    pub protocol: u32,
    pub user: String,
    /// Redacted in `Debug`.
    pub password: Option<Secret>,
    pub limits: Limits,
}

/// What the session setup settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub protocol: u32,
    pub compat_flags: u32,
    pub checksum: ChecksumKind,
    pub seed: i32,
    pub motd: Vec<String>,
    /// MOTD lines past `Limits::max_motd_lines` / `max_motd_bytes`, read and dropped.
    pub motd_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Greeting,
    Lines,
    Compat,
    ChecksumList,
    Seed,
    Done,
}

/// Sans-io handshake: `feed` raw input, send whatever `take_output` returns.
#[derive(Debug)]
pub struct ClientHandshake {
    opts: HandshakeOptions,
    st: St,
    out: Vec<u8>,
    protocol: u32,
    remote: Option<Greeting>,
    compat: u32,
    checksum: Option<ChecksumKind>,
    motd: Vec<String>,
    motd_bytes: usize,
    motd_dropped: u64,
    result: Option<Negotiated>,
}

/// Progress report of [`ClientHandshake::feed`].
#[derive(Debug)]
pub enum HandshakeStatus {
    /// More input is needed.
    NeedInput,
    /// Setup done; input past `consumed` belongs to the multiplexed stream.
    Done(Negotiated),
}

impl ClientHandshake {
    pub fn new(opts: HandshakeOptions) -> Result<Self, Error> {
        if !(MIN_SUPPORTED_SESSION_PROTOCOL..=PROTOCOL_VERSION).contains(&opts.protocol) {
            return Err(Error::UnsupportedProtocol(opts.protocol));
        }
        // Before anything is queued: a separator would inject lines into the daemon protocol.
        opts.args.check()?;
        super::args::check_protocol_text("user name", &opts.user)?;
        let mut out = Vec::new();
        // Stock lists auth digests from protocol 30 on; above 31 the list is mandatory.
        let g = Greeting {
            protocol: opts.protocol,
            sub: Some(SUBPROTOCOL_VERSION),
            digests: Some(AUTH_DIGEST_NAMES.iter().map(|s| (*s).to_owned()).collect()),
        };
        out.extend_from_slice(&g.encode());
        let protocol = opts.protocol;
        Ok(ClientHandshake {
            opts,
            st: St::Greeting,
            out,
            protocol,
            remote: None,
            compat: 0,
            checksum: None,
            motd: Vec::new(),
            motd_bytes: 0,
            motd_dropped: 0,
            result: None,
        })
    }

    /// Bytes to send now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Consumes input; returns how much was used and the status. Call again with the unused
    /// rest plus new input when `NeedInput`.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, HandshakeStatus), Error> {
        let lim = self.opts.limits.clone();
        let mut pos = 0;
        loop {
            let buf = &input[pos..];
            match self.st {
                St::Greeting | St::Lines => {
                    let (line, n) = match decode_line(buf, lim.max_line)? {
                        Decoded::Complete { value, consumed } => (value, consumed),
                        Decoded::Incomplete { .. } => return Ok((pos, HandshakeStatus::NeedInput)),
                    };
                    pos += n;
                    if self.st == St::Greeting {
                        self.on_greeting(&line)?;
                    } else if self.on_line(&line)? {
                        self.st = St::Compat;
                    }
                }
                St::Compat => {
                    if self.protocol < 30 {
                        self.compat = 0;
                        self.after_compat();
                        continue;
                    }
                    match run(buf, |c| c.varint())? {
                        Decoded::Complete { value, consumed } => {
                            pos += consumed;
                            self.compat = value as u32;
                            if self.compat & CF_INC_RECURSE != 0 {
                                return Err(Error::Protocol(
                                    "server enabled incremental recursion, which we did not offer"
                                        .into(),
                                ));
                            }
                            self.after_compat();
                        }
                        Decoded::Incomplete { .. } => return Ok((pos, HandshakeStatus::NeedInput)),
                    }
                }
                St::ChecksumList => {
                    match run(buf, |c| c.vstring(lim.max_vstring).map(<[u8]>::to_vec))? {
                        Decoded::Complete { value, consumed } => {
                            pos += consumed;
                            let list = String::from_utf8_lossy(&value).into_owned();
                            let seed_fix = self.compat & CF_CHKSUM_SEED_FIX != 0;
                            let kind = choose_checksum(&list, seed_fix)
                                .ok_or(Error::ChecksumNegotiation(list))?;
                            self.checksum = Some(kind);
                            self.st = St::Seed;
                        }
                        Decoded::Incomplete { .. } => return Ok((pos, HandshakeStatus::NeedInput)),
                    }
                }
                St::Seed => match run(buf, |c| c.i32())? {
                    Decoded::Complete { value, consumed } => {
                        pos += consumed;
                        let checksum = self.checksum.unwrap_or(if self.protocol >= 30 {
                            ChecksumKind::Md5 {
                                seed_fix: self.compat & CF_CHKSUM_SEED_FIX != 0,
                            }
                        } else {
                            ChecksumKind::Md4Old
                        });
                        let n = Negotiated {
                            protocol: self.protocol,
                            compat_flags: self.compat,
                            checksum,
                            seed: value,
                            motd: std::mem::take(&mut self.motd),
                            motd_dropped: self.motd_dropped,
                        };
                        tracing::debug!(
                            protocol = n.protocol,
                            compat = n.compat_flags,
                            checksum = checksum.name(),
                            "session set up"
                        );
                        self.result = Some(n.clone());
                        self.st = St::Done;
                        return Ok((pos, HandshakeStatus::Done(n)));
                    }
                    Decoded::Incomplete { .. } => return Ok((pos, HandshakeStatus::NeedInput)),
                },
                St::Done => {
                    let n = self
                        .result
                        .clone()
                        .ok_or(Error::Protocol("handshake finished twice".into()))?;
                    return Ok((pos, HandshakeStatus::Done(n)));
                }
            }
        }
    }

    fn on_greeting(&mut self, line: &[u8]) -> Result<(), Error> {
        if let ServerLine::Error(e) = classify_line(line) {
            return Err(Error::Daemon(e));
        }
        let g = parse_greeting(line)?;
        if g.protocol < MIN_SUPPORTED_SESSION_PROTOCOL || g.protocol > MAX_PROTOCOL_VERSION {
            return Err(Error::UnsupportedProtocol(g.protocol));
        }
        let mut p = self.protocol.min(g.protocol);
        // A pre-release peer above us drops the session one more version.
        if g.protocol > self.protocol && g.sub.unwrap_or(0) != 0 {
            p -= 1;
        }
        if p < MIN_SUPPORTED_SESSION_PROTOCOL {
            return Err(Error::UnsupportedProtocol(p));
        }
        self.protocol = p;
        self.remote = Some(g);
        let mut m = self.opts.args.module.clone().into_bytes();
        m.push(b'\n');
        self.out.extend_from_slice(&m);
        self.st = St::Lines;
        Ok(())
    }

    /// Returns true on `@RSYNCD: OK`.
    fn on_line(&mut self, line: &[u8]) -> Result<bool, Error> {
        match classify_line(line) {
            ServerLine::Ok => {
                let args = self.opts.args.encode(self.protocol);
                self.out.extend_from_slice(&args);
                Ok(true)
            }
            ServerLine::Exit => Err(Error::Daemon(
                "daemon ended the session (@RSYNCD: EXIT)".into(),
            )),
            ServerLine::Error(e) => Err(Error::Daemon(e)),
            ServerLine::AuthRequired { challenge } => {
                let pw = self
                    .opts
                    .password
                    .as_ref()
                    .map(Secret::expose)
                    .ok_or(Error::PasswordRequired)?;
                let digests = self.remote.as_ref().and_then(|g| g.digests.as_deref());
                let d = AuthDigest::choose(digests, self.protocol)
                    .ok_or_else(|| Error::Daemon("no daemon-auth digest in common".into()))?;
                let resp = auth_response(d, pw, &challenge);
                self.out
                    .extend_from_slice(format!("{} {}\n", self.opts.user, resp).as_bytes());
                Ok(false)
            }
            ServerLine::Text(t) => {
                // A daemon may send any number of lines: keep a bounded head, count the rest.
                let lim = &self.opts.limits;
                if self.motd.len() < lim.max_motd_lines
                    && self.motd_bytes + t.len() <= lim.max_motd_bytes
                {
                    self.motd_bytes += t.len();
                    self.motd.push(String::from_utf8_lossy(&t).into_owned());
                } else {
                    self.motd_dropped += 1;
                }
                Ok(false)
            }
        }
    }

    fn after_compat(&mut self) {
        if self.protocol >= 30 && self.compat & CF_VARINT_FLIST_FLAGS != 0 {
            put_vstring(&mut self.out, CHECKSUM_NAMES.join(" ").as_bytes());
            self.st = St::ChecksumList;
        } else {
            self.st = St::Seed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pw: Option<&str>) -> HandshakeOptions {
        HandshakeOptions {
            args: ServerArgs::pull("mod", "", false),
            protocol: 32,
            user: "alice".into(),
            password: pw.map(|p| Secret::from(p.as_bytes())),
            limits: Limits::default(),
        }
    }

    #[test]
    fn full_exchange_byte_by_byte() {
        let mut h = ClientHandshake::new(opts(Some("s3cret"))).unwrap();
        assert_eq!(h.take_output(), b"@RSYNCD: 32.0 sha512 sha256 sha1 md5\n");
        let mut server: Vec<u8> = b"@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4\nWelcome\n\n@RSYNCD: AUTHREQD abc\n@RSYNCD: OK\n".to_vec();
        server.extend_from_slice(&[0x81, 0xfe]);
        server.push(35);
        server.extend_from_slice(b"xxh128 xxh3 xxh64 md5 md4 sha1 none");
        server.extend_from_slice(&0x6b1340a6i32.to_le_bytes());
        server.extend_from_slice(b"MUX");
        // Feed one byte at a time, as a slow network would.
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut done = None;
        for &b in &server {
            pending.push(b);
            let (used, st) = h.feed(&pending).unwrap();
            pending.drain(..used);
            out.extend(h.take_output());
            if let HandshakeStatus::Done(n) = st {
                done = Some(n);
                break;
            }
        }
        let n = done.unwrap();
        assert_eq!(n.protocol, 32);
        assert_eq!(n.compat_flags, 0x1fe);
        assert_eq!(n.checksum, ChecksumKind::Xxh128);
        assert_eq!(n.seed, 0x6b1340a6);
        assert_eq!(n.motd, ["Welcome", ""]);
        let resp = auth_response(AuthDigest::Sha512, b"s3cret", "abc");
        let mut want = format!("mod\nalice {resp}\n").into_bytes();
        want.extend_from_slice(
            b"--server\0--sender\0-logDtpre.LsfxCIvu\0--numeric-ids\0.\0mod/\0\0",
        );
        want.push(21);
        want.extend_from_slice(b"xxh128 xxh3 xxh64 md5");
        assert_eq!(out, want);
    }

    /// Handshake options and the machine holding them may be logged: the password must not
    /// show, neither as text nor as the byte list `Vec<u8>` prints.
    #[test]
    fn debug_output_hides_the_password() {
        let o = opts(Some("pw-Zq81x"));
        let h = ClientHandshake::new(o.clone()).unwrap();
        let shown = format!("{o:?} {h:?} {o:#?}");
        let as_bytes = format!("{:?}", b"pw-Zq81x".to_vec());
        assert!(!shown.contains("pw-Zq81x"), "{shown}");
        assert!(!shown.contains(&as_bytes[1..as_bytes.len() - 1]), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn daemon_errors_and_missing_password() {
        let mut h = ClientHandshake::new(opts(None)).unwrap();
        let e = h
            .feed(b"@RSYNCD: 31.0\n@ERROR: Unknown module 'mod'\n")
            .unwrap_err();
        assert!(matches!(e, Error::Daemon(m) if m == "Unknown module 'mod'"));
        let mut h = ClientHandshake::new(opts(None)).unwrap();
        assert!(matches!(
            h.feed(b"@RSYNCD: 31.0\n@RSYNCD: AUTHREQD x\n"),
            Err(Error::PasswordRequired)
        ));
        let mut h = ClientHandshake::new(opts(None)).unwrap();
        assert!(matches!(
            h.feed(b"@RSYNCD: 26\n"),
            Err(Error::UnsupportedProtocol(26))
        ));
    }

    /// An openrsync daemon (macOS 15+), as its source writes: `@RSYNCD: 29` with neither a
    /// subprotocol nor a digest list, the challenge answered with the old MD4 form, `@ERROR `
    /// without a colon on refusal; no compat flags and no checksum list at 29.
    #[test]
    fn openrsync_daemon_at_protocol_29() {
        let mut h = ClientHandshake::new(opts(Some("pw"))).unwrap();
        h.take_output();
        let mut s = b"@RSYNCD: 29\n@RSYNCD: AUTHREQD Y2hhbGxlbmdl\n@RSYNCD: OK\n".to_vec();
        s.extend_from_slice(&0x1234_5678i32.to_le_bytes());
        let (used, st) = h.feed(&s).unwrap();
        assert_eq!(used, s.len());
        let HandshakeStatus::Done(n) = st else {
            panic!("expected done")
        };
        assert_eq!(n.protocol, 29);
        assert_eq!(n.compat_flags, 0);
        assert_eq!(n.checksum, ChecksumKind::Md4Old);
        assert_eq!(n.seed, 0x1234_5678);
        let resp = auth_response(AuthDigest::Md4Old, b"pw", "Y2hhbGxlbmdl");
        let mut want = format!("mod\nalice {resp}\n").into_bytes();
        want.extend_from_slice(b"--server\n--sender\n-logDtpr\n--numeric-ids\n.\nmod/\n\n");
        assert_eq!(h.take_output(), want);

        for refusal in [
            &b"@RSYNCD: 29\n@RSYNCD: AUTHREQD abc\n@ERROR mod: authentication failed\n"[..],
            b"@RSYNCD: 29\n@ERROR could not negotiate a protocol; client requested 28 (supported range: 29 to 29)\n",
            b"@RSYNCD: 29\n@ERROR mod is not a valid module\n",
        ] {
            let mut h = ClientHandshake::new(opts(Some("pw"))).unwrap();
            let e = h.feed(refusal).unwrap_err();
            let Error::Daemon(m) = &e else {
                panic!("{e:?}")
            };
            let line = std::str::from_utf8(refusal).unwrap().lines().last().unwrap();
            assert_eq!(Some(m.as_str()), line.strip_prefix("@ERROR "));
        }
    }

    #[test]
    fn old_peer_without_negotiation_uses_md5() {
        let mut h = ClientHandshake::new(opts(None)).unwrap();
        let mut s = b"@RSYNCD: 30.0\n@RSYNCD: OK\n".to_vec();
        s.push(0x08);
        s.extend_from_slice(&7i32.to_le_bytes());
        let (used, st) = h.feed(&s).unwrap();
        assert_eq!(used, s.len());
        match st {
            HandshakeStatus::Done(n) => {
                assert_eq!(n.protocol, 30);
                assert_eq!(n.checksum, ChecksumKind::Md5 { seed_fix: false });
            }
            HandshakeStatus::NeedInput => panic!("expected done"),
        }
    }
}
