//! The agent's ping request, as the original `turku-storage-ping` reads it from the SSH
//! session's stdin: JSON text, then a line whose right-stripped content is exactly `.`.
//!
//! Sans-io: bytes go in through [`PingRequestReader::feed`] (and [`PingRequestReader::finish`]
//! at EOF), a validated [`PingRequest`] comes out. Nothing here reads, writes or logs.
//!
//! Tolerance follows the original reader (spec turku.md §2.4 "Input protocol"):
//! * lines are split on `\n` only (Python's stdin on POSIX does no newline translation);
//! * the terminator is any line that, right-stripped of Python whitespace, is exactly `.`,
//!   so `.\r\n`, `. \t\n` and a final `.` without newline all end the request, ` .` does not;
//! * every line before it is concatenated and parsed as one JSON document, so blank lines,
//!   CRLF line ends and pretty-printed JSON are accepted (JSON whitespace includes `\r`);
//! * EOF before a `.` line also ends the request ([`PingRequestReader::finish`]);
//! * bytes after the `.` line are not part of the request: they are kept for the caller
//!   ([`PingRequestReader::remainder`]); the original never reads them in backup mode and
//!   drains them until EOF in restore mode.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::constants::{
    MAX_MACHINE_UUID_BYTES, MAX_PING_REQUEST_BYTES, MAX_PING_SOURCES, MAX_RSYNC_PASSWORD_BYTES,
    MAX_RSYNC_USERNAME_BYTES, MAX_SOURCE_NAME_CHARS,
};

/// How many characters of a hostile name an error message quotes.
const QUOTED_NAME_CHARS: usize = 64;

/// Why a ping request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("machine uuid {0:?} is not 1 to {MAX_MACHINE_UUID_BYTES} hex digits and dashes")]
    BadMachineUuid(String),
    #[error("ping request exceeds {max} bytes before the end of its `.` line")]
    TooLarge { max: usize },
    #[error("Invalid input JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ping request has no `port`")]
    MissingPort,
    #[error("ping request `port` is not an integer")]
    PortNotInteger,
    #[error("ping request `port` {0} is outside 1..=65535")]
    PortOutOfRange(String),
    #[error("ping request carries more than {max} sources")]
    TooManySources { max: usize },
    #[error("source name {name:?} is refused: {reason}")]
    BadSourceName { name: String, reason: &'static str },
    #[error("rsync username for source {source_name:?} is refused: {reason}")]
    BadUsername {
        source_name: String,
        reason: &'static str,
    },
    #[error("rsync password for source {source_name:?} is refused: {reason}")]
    BadPassword {
        source_name: String,
        reason: &'static str,
    },
    #[error("the ping request reader has already produced its result")]
    AlreadyComplete,
}

/// A secret that never shows in `Debug` output (logs, panics, error chains).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that must hand it on (`RSYNC_PASSWORD`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the agent asks for: the original switches on `action == "restore"` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingAction {
    Checkin,
    Restore,
}

/// Per-session rsync credentials for one source module on the agent's rsyncd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCredentials {
    pub username: String,
    pub password: Redacted,
}

/// A validated ping request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingRequest {
    /// From the forced command's argument, never from stdin: an agent can only act as itself.
    pub machine_uuid: String,
    pub action: PingAction,
    /// Loopback port on the storage reverse-forwarded to the agent's rsyncd.
    pub port: u16,
    /// Whether the agent wants INFO-level progress on the session's stderr.
    pub verbose: bool,
    /// Only entries with both a username and a password: the original treats any other
    /// entry as absent (and the source then has no credentials).
    pub sources: BTreeMap<String, SourceCredentials>,
}

#[derive(Debug)]
enum ReaderState {
    Reading,
    Complete,
}

/// Incremental reader of one ping request. Buffers at most [`MAX_PING_REQUEST_BYTES`].
#[derive(Debug)]
pub struct PingRequestReader {
    machine_uuid: String,
    /// Every byte fed so far, up to the end of the terminator line once found.
    buffer: Vec<u8>,
    /// Where the line not yet ended by `\n` starts in `buffer`.
    line_start: usize,
    /// Bytes fed after the terminator line, in the call that found it.
    remainder: Vec<u8>,
    state: ReaderState,
}

impl PingRequestReader {
    /// `machine_uuid` is the forced command's argument.
    pub fn new(machine_uuid: &str) -> Result<Self, PingError> {
        validate_machine_uuid(machine_uuid)?;
        Ok(Self {
            machine_uuid: machine_uuid.to_owned(),
            buffer: Vec::new(),
            line_start: 0,
            remainder: Vec::new(),
            state: ReaderState::Reading,
        })
    }

    /// Takes the next bytes of stdin. `Ok(None)`: the `.` line has not arrived yet.
    /// After a result or an error the reader is spent: later calls give `AlreadyComplete`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<PingRequest>, PingError> {
        if !matches!(self.state, ReaderState::Reading) {
            return Err(PingError::AlreadyComplete);
        }
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(newline) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                let rest = &bytes[pos..];
                self.reserve_or_fail(rest.len())?;
                self.buffer.extend_from_slice(rest);
                return Ok(None);
            };
            let line_end = pos + newline + 1;
            self.reserve_or_fail(line_end - pos)?;
            self.buffer.extend_from_slice(&bytes[pos..line_end]);
            pos = line_end;
            let line = &self.buffer[self.line_start..];
            if is_terminator(&line[..line.len() - 1]) {
                self.state = ReaderState::Complete;
                self.remainder = bytes[pos..].to_vec();
                return self.parse(self.line_start).map(Some);
            }
            self.line_start = self.buffer.len();
        }
        Ok(None)
    }

    /// Stdin reached EOF. Like the original, whatever came before is the request, with or
    /// without its `.` line.
    pub fn finish(&mut self) -> Result<PingRequest, PingError> {
        if !matches!(self.state, ReaderState::Reading) {
            return Err(PingError::AlreadyComplete);
        }
        self.state = ReaderState::Complete;
        let json_end = if is_terminator(&self.buffer[self.line_start..]) {
            self.line_start
        } else {
            self.buffer.len()
        };
        self.parse(json_end)
    }

    /// Bytes that followed the `.` line in the `feed` call that completed the request.
    pub fn remainder(&self) -> &[u8] {
        &self.remainder
    }

    fn reserve_or_fail(&mut self, more: usize) -> Result<(), PingError> {
        if self.buffer.len().saturating_add(more) > MAX_PING_REQUEST_BYTES {
            self.state = ReaderState::Complete;
            self.buffer = Vec::new();
            return Err(PingError::TooLarge {
                max: MAX_PING_REQUEST_BYTES,
            });
        }
        Ok(())
    }

    fn parse(&self, json_end: usize) -> Result<PingRequest, PingError> {
        let wire: WireRequest = serde_json::from_slice(&self.buffer[..json_end])?;
        wire.validate(self.machine_uuid.clone())
    }
}

/// The original compares `line.rstrip() == "."`; `rstrip` only looks at the right, so the
/// line must start with `.`.
fn is_terminator(line: &[u8]) -> bool {
    if line.first() != Some(&b'.') {
        return false;
    }
    match std::str::from_utf8(line) {
        Ok(text) => text.trim_end_matches(is_python_whitespace) == ".",
        Err(_) => false,
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII separators 0x1C..=0x1F.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn validate_machine_uuid(uuid: &str) -> Result<(), PingError> {
    let sane = !uuid.is_empty()
        && uuid.len() <= MAX_MACHINE_UUID_BYTES
        && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if sane {
        Ok(())
    } else {
        Err(PingError::BadMachineUuid(quote(uuid)))
    }
}

fn quote(text: &str) -> String {
    text.chars().take(QUOTED_NAME_CHARS).collect()
}

/// The request as JSON. Unknown keys are ignored, as the original does (it reads keys by
/// name); a `machine_uuid` key in particular has no effect. Later duplicates of a key win,
/// as with Python's `json.loads`.
#[derive(Default)]
struct WireRequest {
    port: Option<Shallow>,
    verbose: Option<Shallow>,
    action: Option<Shallow>,
    sources: Option<BoundedSources>,
}

#[derive(Default)]
struct WireCredentials {
    username: Option<String>,
    password: Option<String>,
}

/// Hand-written because serde's derived struct impls also accept a JSON array, field by
/// position, where the original (a Python dict lookup) fails.
impl<'de> Deserialize<'de> for WireRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = WireRequest;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ping request object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut request = WireRequest::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "port" => request.port = Some(map.next_value()?),
                        "verbose" => request.verbose = Some(map.next_value()?),
                        "action" => request.action = Some(map.next_value()?),
                        "sources" => request.sources = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(request)
            }
        }
        deserializer.deserialize_map(RequestVisitor)
    }
}

impl<'de> Deserialize<'de> for WireCredentials {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CredentialsVisitor;
        impl<'de> Visitor<'de> for CredentialsVisitor {
            type Value = WireCredentials;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with `username` and `password` strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut credentials = WireCredentials::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "username" => credentials.username = map.next_value()?,
                        "password" => credentials.password = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(credentials)
            }
        }
        deserializer.deserialize_map(CredentialsVisitor)
    }
}

/// The `sources` object, keeping at most [`MAX_PING_SOURCES`] entries in memory. Later
/// duplicates of a name replace earlier ones, as Python's `json.loads` does.
struct BoundedSources {
    entries: BTreeMap<String, WireCredentials>,
    overflowed: bool,
}

impl<'de> Deserialize<'de> for BoundedSources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourcesVisitor;
        impl<'de> Visitor<'de> for SourcesVisitor {
            type Value = BoundedSources;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of source name to {username, password}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut sources = BoundedSources {
                    entries: BTreeMap::new(),
                    overflowed: false,
                };
                while let Some(name) = map.next_key::<String>()? {
                    if sources.overflowed
                        || (sources.entries.len() >= MAX_PING_SOURCES
                            && !sources.entries.contains_key(&name))
                    {
                        sources.overflowed = true;
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let credentials = map.next_value::<WireCredentials>()?;
                    sources.entries.insert(name, credentials);
                }
                Ok(sources)
            }
        }
        deserializer.deserialize_map(SourcesVisitor)
    }
}

impl WireRequest {
    fn validate(self, machine_uuid: String) -> Result<PingRequest, PingError> {
        let port = validate_port(self.port)?;
        let action = match self.action {
            Some(Shallow::String(action)) if action == "restore" => PingAction::Restore,
            _ => PingAction::Checkin,
        };
        let verbose = self.verbose.as_ref().is_some_and(python_truthy);
        let mut sources = BTreeMap::new();
        if let Some(wire_sources) = self.sources {
            if wire_sources.overflowed {
                return Err(PingError::TooManySources {
                    max: MAX_PING_SOURCES,
                });
            }
            for (name, credentials) in wire_sources.entries {
                validate_source_name(&name)?;
                let (Some(username), Some(password)) = (credentials.username, credentials.password)
                else {
                    continue;
                };
                if username.is_empty() || password.is_empty() {
                    continue;
                }
                validate_username(&name, &username)?;
                validate_password(&name, &password)?;
                sources.insert(
                    name,
                    SourceCredentials {
                        username,
                        password: Redacted::new(password),
                    },
                );
            }
        }
        Ok(PingRequest {
            machine_uuid,
            action,
            port,
            verbose,
            sources,
        })
    }
}

fn validate_port(port: Option<Shallow>) -> Result<u16, PingError> {
    let number = match port {
        None | Some(Shallow::Null) => return Err(PingError::MissingPort),
        Some(Shallow::Number(number)) => number,
        Some(_) => return Err(PingError::PortNotInteger),
    };
    if !(number.is_u64() || number.is_i64()) {
        return Err(PingError::PortNotInteger);
    }
    match number.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(port) if port != 0 => Ok(port),
        _ => Err(PingError::PortOutOfRange(number.to_string())),
    }
}

/// Python truthiness, which is how the original reads `verbose`.
fn python_truthy(value: &Shallow) -> bool {
    match value {
        Shallow::Null => false,
        Shallow::Bool(b) => *b,
        Shallow::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Shallow::String(s) => !s.is_empty(),
        Shallow::Container { non_empty } => *non_empty,
    }
}

/// A JSON value with only what the request's scalar keys need: a list or an object is
/// skipped without being built (a megabyte of `[0,0,...]` would otherwise cost tens of
/// megabytes of values), remembering only whether it was empty.
#[derive(Debug)]
enum Shallow {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Container { non_empty: bool },
}

impl<'de> Deserialize<'de> for Shallow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShallowVisitor;
        impl<'de> Visitor<'de> for ShallowVisitor {
            type Value = Shallow;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_unit<E>(self) -> Result<Shallow, E> {
                Ok(Shallow::Null)
            }

            fn visit_none<E>(self) -> Result<Shallow, E> {
                Ok(Shallow::Null)
            }

            fn visit_bool<E>(self, b: bool) -> Result<Shallow, E> {
                Ok(Shallow::Bool(b))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Shallow, E> {
                Ok(Shallow::Number(n.into()))
            }

            fn visit_i64<E>(self, n: i64) -> Result<Shallow, E> {
                Ok(Shallow::Number(n.into()))
            }

            fn visit_f64<E>(self, n: f64) -> Result<Shallow, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Shallow::Null, Shallow::Number))
            }

            fn visit_str<E>(self, s: &str) -> Result<Shallow, E> {
                Ok(Shallow::String(s.to_owned()))
            }

            fn visit_string<E>(self, s: String) -> Result<Shallow, E> {
                Ok(Shallow::String(s))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Shallow, A::Error> {
                let non_empty = seq.next_element::<IgnoredAny>()?.is_some();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shallow::Container { non_empty })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shallow, A::Error> {
                let non_empty = map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some();
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shallow::Container { non_empty })
            }
        }
        deserializer.deserialize_any(ShallowVisitor)
    }
}

/// Source names become directory names on the storage.
fn validate_source_name(name: &str) -> Result<(), PingError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.chars().count() > MAX_SOURCE_NAME_CHARS {
        "longer than 255 characters"
    } else if name == "." || name == ".." {
        "a relative path component"
    } else if name.contains('/') {
        "contains `/`"
    } else if name.chars().any(char::is_control) {
        "contains a control character (NUL, newline, ...)"
    } else {
        return Ok(());
    };
    Err(PingError::BadSourceName {
        name: quote(name),
        reason,
    })
}

/// The username goes into `rsync://<username>@127.0.0.1:<port>/...`: nothing in it may end
/// the userinfo part early or change the host, port or module.
fn validate_username(source_name: &str, username: &str) -> Result<(), PingError> {
    let reason = if username.len() > MAX_RSYNC_USERNAME_BYTES {
        "too long"
    } else if username
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '@' | '/' | ':' | '?' | '#'))
    {
        "contains a character that would change the rsync URL"
    } else {
        return Ok(());
    };
    Err(PingError::BadUsername {
        source_name: quote(source_name),
        reason,
    })
}

/// The password goes into the `RSYNC_PASSWORD` environment variable, which cannot hold NUL.
fn validate_password(source_name: &str, password: &str) -> Result<(), PingError> {
    let reason = if password.len() > MAX_RSYNC_PASSWORD_BYTES {
        "too long"
    } else if password.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(PingError::BadPassword {
        source_name: quote(source_name),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "5a3b1a0e-6f0e-4c1e-9a43-0d2a8c1f7b11";

    /// What the original agent writes: `json.dumps(ssh_req) + "\n.\n"`, keys in the order
    /// the dict literal lists them, json.dumps's default `", "` / `": "` separators.
    const AGENT_CHECKIN: &[u8] = b"{\"verbose\": true, \"action\": \"checkin\", \"port\": 51234, \
\"sources\": {\"etc\": {\"username\": \"0f8e7c52-3d1b-4b9a-8f4e-2c6d5e7a9b10\", \
\"password\": \"Xq3vT9kLmN2pR7sW4yZ8aB1cD5eF6g\"}, \"home\": {\"username\": \
\"9d2c4e6f-1a3b-4c5d-8e7f-0a1b2c3d4e5f\", \"password\": \"aaaaaaaaaabbbbbbbbbbcccccccccc\"}}}\n.\n";

    const AGENT_RESTORE: &[u8] =
        b"{\"verbose\": true, \"action\": \"restore\", \"port\": 65535}\n.\n";

    fn reader() -> PingRequestReader {
        PingRequestReader::new(UUID).unwrap()
    }

    fn read_whole(bytes: &[u8]) -> Result<Option<PingRequest>, PingError> {
        reader().feed(bytes)
    }

    fn expect_request(bytes: &[u8]) -> PingRequest {
        read_whole(bytes).unwrap().unwrap()
    }

    #[test]
    fn original_agent_checkin_is_read_exactly() {
        let request = expect_request(AGENT_CHECKIN);
        assert_eq!(request.machine_uuid, UUID);
        assert_eq!(request.action, PingAction::Checkin);
        assert_eq!(request.port, 51234);
        assert!(request.verbose);
        assert_eq!(request.sources.len(), 2);
        let etc = &request.sources["etc"];
        assert_eq!(etc.username, "0f8e7c52-3d1b-4b9a-8f4e-2c6d5e7a9b10");
        assert_eq!(etc.password.expose(), "Xq3vT9kLmN2pR7sW4yZ8aB1cD5eF6g");
        assert_eq!(
            request.sources["home"].password.expose(),
            "aaaaaaaaaabbbbbbbbbbcccccccccc"
        );
    }

    #[test]
    fn original_agent_restore_has_no_sources() {
        let request = expect_request(AGENT_RESTORE);
        assert_eq!(request.action, PingAction::Restore);
        assert_eq!(request.port, 65535);
        assert!(request.sources.is_empty());
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_request_only_at_the_dot_line() {
        let mut r = reader();
        let (last, head) = AGENT_CHECKIN.split_last().unwrap();
        for byte in head {
            assert!(r.feed(std::slice::from_ref(byte)).unwrap().is_none());
        }
        let request = r.feed(&[*last]).unwrap().unwrap();
        assert_eq!(request, expect_request(AGENT_CHECKIN));
    }

    #[test]
    fn crlf_and_trailing_whitespace_on_the_dot_line_are_tolerated() {
        let crlf = b"{\"port\": 50000}\r\n.\r\n";
        assert_eq!(expect_request(crlf).port, 50000);
        let spaced = b"{\"port\": 50000}\n. \t\x0c\n";
        assert_eq!(expect_request(spaced).port, 50000);
        // Python's str.isspace counts 0x1C..=0x1F; U+3000 is Unicode whitespace.
        let exotic = "{\"port\": 50000}\n.\u{1f}\u{3000}\n".as_bytes();
        assert_eq!(expect_request(exotic).port, 50000);
    }

    #[test]
    fn leading_whitespace_makes_it_no_terminator() {
        assert!(read_whole(b"{\"port\": 50000}\n .\n").unwrap().is_none());
        assert!(read_whole(b"{\"port\": 50000}\n..\n").unwrap().is_none());
    }

    #[test]
    fn blank_lines_and_multiline_json_before_the_dot_are_concatenated() {
        let request = expect_request(b"\n\n{\n  \"port\": 50001,\n  \"verbose\": false\n}\n\n.\n");
        assert_eq!(request.port, 50001);
        assert!(!request.verbose);
    }

    #[test]
    fn bytes_after_the_dot_line_are_left_for_the_caller() {
        let mut r = reader();
        let request = r
            .feed(b"{\"port\": 50002}\n.\nlater stdin")
            .unwrap()
            .unwrap();
        assert_eq!(request.port, 50002);
        assert_eq!(r.remainder(), b"later stdin");
        assert!(matches!(r.feed(b"x"), Err(PingError::AlreadyComplete)));
    }

    #[test]
    fn without_the_dot_line_feed_never_answers_but_eof_does() {
        let mut r = reader();
        for _ in 0..3 {
            assert!(r.feed(b"{\"port\": 50003}\n").unwrap().is_none());
        }
        // Three concatenated objects are not one JSON document.
        assert!(matches!(r.finish(), Err(PingError::Json(_))));

        let mut r = reader();
        assert!(r.feed(b"{\"port\": 50003}\n").unwrap().is_none());
        assert_eq!(r.finish().unwrap().port, 50003);

        let mut r = reader();
        assert!(r.feed(b"{\"port\": 50003}\n.").unwrap().is_none());
        assert_eq!(r.finish().unwrap().port, 50003);
    }

    #[test]
    fn oversize_is_refused_before_buffering_it() {
        let mut r = reader();
        let chunk = vec![b' '; 64 * 1024];
        let mut refused = false;
        for _ in 0..(MAX_PING_REQUEST_BYTES / chunk.len() + 1) {
            match r.feed(&chunk) {
                Ok(None) => assert!(r.buffer.len() <= MAX_PING_REQUEST_BYTES),
                Err(PingError::TooLarge { max }) => {
                    assert_eq!(max, MAX_PING_REQUEST_BYTES);
                    refused = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(refused);
        assert!(r.buffer.len() <= MAX_PING_REQUEST_BYTES);
        assert!(matches!(r.feed(b".\n"), Err(PingError::AlreadyComplete)));

        // Exactly at the bound is still accepted.
        let head = b"{\"port\": 50004}";
        let mut exact = head.to_vec();
        exact.resize(MAX_PING_REQUEST_BYTES - 2, b'\n');
        exact.extend_from_slice(b".\n");
        assert_eq!(expect_request(&exact).port, 50004);
        exact.insert(0, b' ');
        assert!(matches!(
            read_whole(&exact),
            Err(PingError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_json_is_refused() {
        for bad in [
            &b".\n"[..],
            b"{\"port\": 50000\n.\n",
            b"[50000]\n.\n",
            b"\"port\"\n.\n",
            b"{\"port\": 50000}}\n.\n",
            b"{\"port\": 50000, \"sources\": {\"etc\": \"x\"}}\n.\n",
            b"{\"port\": 50000, \"sources\": [\"etc\"]}\n.\n",
            b"{\"port\": 50000, \"sources\": {\"etc\": {\"username\": 5, \"password\": \"p\"}}}\n.\n",
            b"{\"port\": \xff}\n.\n",
            b"{\"port\": 50000, \"sources\": {\"etc\": [\"u\", \"p\"]}}\n.\n",
        ] {
            assert!(
                matches!(read_whole(bad), Err(PingError::Json(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn port_must_be_an_integer_in_range() {
        assert!(matches!(
            read_whole(b"{}\n.\n"),
            Err(PingError::MissingPort)
        ));
        assert!(matches!(
            read_whole(b"{\"port\": null}\n.\n"),
            Err(PingError::MissingPort)
        ));
        for bad in [&b"\"50000\""[..], b"50000.0", b"true", b"[1]"] {
            let mut text = b"{\"port\": ".to_vec();
            text.extend_from_slice(bad);
            text.extend_from_slice(b"}\n.\n");
            assert!(matches!(read_whole(&text), Err(PingError::PortNotInteger)));
        }
        for bad in ["0", "-1", "65536", "18446744073709551616"] {
            let text = format!("{{\"port\": {bad}}}\n.\n");
            match read_whole(text.as_bytes()) {
                Err(PingError::PortOutOfRange(_)) | Err(PingError::PortNotInteger) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(expect_request(b"{\"port\": 1}\n.\n").port, 1);
    }

    #[test]
    fn action_and_verbose_read_as_the_original_does() {
        let r = expect_request(b"{\"port\": 50000}\n.\n");
        assert_eq!(r.action, PingAction::Checkin);
        assert!(!r.verbose);
        let r =
            expect_request(b"{\"port\": 50000, \"action\": \"backup-ish\", \"verbose\": 1}\n.\n");
        assert_eq!(r.action, PingAction::Checkin);
        assert!(r.verbose);
        let r =
            expect_request(b"{\"port\": 50000, \"action\": [\"restore\"], \"verbose\": \"\"}\n.\n");
        assert_eq!(r.action, PingAction::Checkin);
        assert!(!r.verbose);
    }

    #[test]
    fn unknown_fields_are_ignored_and_cannot_change_the_machine() {
        let request = expect_request(
            b"{\"port\": 50000, \"machine_uuid\": \"00000000-0000-0000-0000-000000000000\", \
\"future\": {\"x\": [1, 2]}, \"sources\": {\"etc\": {\"username\": \"u\", \"password\": \"p\", \
\"bwlimit\": 5}}}\n.\n",
        );
        assert_eq!(request.machine_uuid, UUID);
        assert_eq!(request.sources["etc"].username, "u");
    }

    #[test]
    fn incomplete_credentials_count_as_absent() {
        let request = expect_request(
            b"{\"port\": 50000, \"sources\": {\"a\": {\"username\": \"\", \"password\": \"p\"}, \
\"b\": {\"username\": \"u\"}, \"c\": {}, \"d\": {\"username\": \"u\", \"password\": \"p\"}}}\n.\n",
        );
        assert_eq!(request.sources.keys().collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn source_names_and_credentials_are_validated() {
        for name in ["", ".", "..", "a/b", "a\\u0000b", "a\\nb"] {
            let text = format!(
                "{{\"port\": 50000, \"sources\": {{\"{name}\": {{\"username\": \"u\", \"password\": \"p\"}}}}}}\n.\n"
            );
            assert!(
                matches!(
                    read_whole(text.as_bytes()),
                    Err(PingError::BadSourceName { .. })
                ),
                "{name:?}"
            );
        }
        let long = "x".repeat(MAX_SOURCE_NAME_CHARS + 1);
        let text = format!("{{\"port\": 50000, \"sources\": {{\"{long}\": {{}}}}}}\n.\n");
        assert!(matches!(
            read_whole(text.as_bytes()),
            Err(PingError::BadSourceName { .. })
        ));

        for user in ["evil@10.0.0.1", "a/b", "a:b", "a b"] {
            let text = format!(
                "{{\"port\": 50000, \"sources\": {{\"etc\": {{\"username\": \"{user}\", \"password\": \"p\"}}}}}}\n.\n"
            );
            assert!(
                matches!(
                    read_whole(text.as_bytes()),
                    Err(PingError::BadUsername { .. })
                ),
                "{user:?}"
            );
        }
        let text = "{\"port\": 50000, \"sources\": {\"etc\": {\"username\": \"u\", \"password\": \"p\\u0000\"}}}\n.\n";
        assert!(matches!(
            read_whole(text.as_bytes()),
            Err(PingError::BadPassword { .. })
        ));
    }

    #[test]
    fn source_count_is_bounded() {
        let mut text = String::from("{\"port\": 50000, \"sources\": {");
        for i in 0..=MAX_PING_SOURCES {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"s{i}\": {{}}"));
        }
        text.push_str("}}\n.\n");
        assert!(matches!(
            read_whole(text.as_bytes()),
            Err(PingError::TooManySources { max }) if max == MAX_PING_SOURCES
        ));
    }

    #[test]
    fn machine_uuid_must_be_sane() {
        for bad in [
            "",
            "../etc",
            "5a3b1a0e 6f0e",
            &"a".repeat(MAX_MACHINE_UUID_BYTES + 1),
        ] {
            assert!(matches!(
                PingRequestReader::new(bad),
                Err(PingError::BadMachineUuid(_))
            ));
        }
    }

    #[test]
    fn password_never_shows_in_debug() {
        let request = expect_request(AGENT_CHECKIN);
        let shown = format!("{request:?}");
        assert!(!shown.contains("Xq3vT9kLmN2pR7sW4yZ8aB1cD5eF6g"));
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("0f8e7c52-3d1b-4b9a-8f4e-2c6d5e7a9b10"));
    }

    #[test]
    fn scalar_keys_read_containers_by_emptiness_only() {
        let many = format!(
            "{{\"port\": 50000, \"verbose\": [{}0], \"action\": {{\"a\": [1]}}}}\n.\n",
            "0,".repeat(200_000)
        );
        let request = expect_request(many.as_bytes());
        assert!(request.verbose, "a non-empty list is true");
        assert_eq!(request.action, PingAction::Checkin);
        let request = expect_request(b"{\"port\": 50000, \"verbose\": []}\n.\n");
        assert!(!request.verbose, "an empty list is false");
        let request = expect_request(b"{\"port\": 50000, \"verbose\": {}}\n.\n");
        assert!(!request.verbose);
        let request = expect_request(b"{\"port\": 50000, \"verbose\": 0.5}\n.\n");
        assert!(request.verbose);
        assert!(matches!(
            read_whole(b"{\"port\": [50000]}\n.\n"),
            Err(PingError::PortNotInteger)
        ));
    }
}
