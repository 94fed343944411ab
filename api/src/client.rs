//! A blocking client for the coordinator's `/v1` API, shared by the storage daemon (from
//! `spawn_blocking`) and the agent.
//!
//! Every call is a `POST` of a JSON body with the exact content type the original coordinator
//! demands (`spec/turku.md` §1.4) to `<api_url>/<endpoint>`. Request bodies carry secrets, so
//! they appear in no error and no log, and redirects are never followed: a POST with secrets
//! must not be re-sent to wherever a `Location` header points.
//!
//! ```no_run
//! use turku_api_types::client::{ApiClient, ClientOptions};
//! use turku_api_types::v1::{MachineRef, StorageCredentials, StoragePingCheckinRequest};
//! let client = ApiClient::new("https://turku.example.com/v1", ClientOptions::default())?;
//! let due = client.storage_ping_checkin(&StoragePingCheckinRequest {
//!     storage: StorageCredentials { name: "primary".into(), secret: "s".into() },
//!     machine: MachineRef { uuid: "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11".into() },
//! })?;
//! println!("{} sources due", due.machine.scheduled_sources.len());
//! # Ok::<(), turku_api_types::client::ApiError>(())
//! ```

use std::fmt;
use std::io::Read as _;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::constants::client as limits;
use crate::constants::{endpoint, CONTENT_TYPE_JSON};
use crate::v1::{
    AgentPingCheckinResponse, AgentPingRequest, AgentPingRestoreResponse, EmptyResponse,
    HealthResponse, StoragePingCheckinRequest, StoragePingCheckinResponse,
    StoragePingSourceUpdateRequest, StorageUpdateConfigRequest, StorageUpdateConfigResponse,
    UpdateConfigRequest,
};

/// Tuning of an [`ApiClient`]; `Default` gives the values in [`crate::constants::client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Bound on DNS, TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on one whole call, from connecting to the last byte of the reply.
    pub request_timeout: Duration,
    /// Largest success reply read; a longer one is [`ApiError::ResponseTooLarge`].
    pub max_response_bytes: u64,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: limits::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: limits::DEFAULT_REQUEST_TIMEOUT,
            max_response_bytes: limits::MAX_RESPONSE_BYTES,
            user_agent: limits::USER_AGENT.to_owned(),
        }
    }
}

/// How a caller should react to an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// The coordinator answered and said no (4xx): wrong secret, unknown machine, invalid
    /// request. Retrying the same request will not help.
    Refused,
    /// The coordinator could not be reached, timed out, or failed (5xx, 408, 429): try again
    /// later; nothing was refused.
    Unavailable,
    /// Something answered, but not with a usable reply (redirect, oversize or undecodable
    /// body): usually a wrong `api_url` or a proxy in the way.
    BadReply,
    /// The call never left this process: an invalid `api_url`, endpoint or body.
    Local,
}

/// Failure of an [`ApiClient`] call. No variant holds any part of a request body; URLs are
/// shown without userinfo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// `api_url` is not an `http://` or `https://` URL that endpoints can be appended to.
    #[error("invalid api_url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, userinfo removed.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An endpoint name that is not a plain path segment.
    #[error("invalid endpoint name {endpoint:?}")]
    InvalidEndpoint {
        /// The name as given.
        endpoint: String,
    },
    /// The request body could not be encoded as JSON.
    #[error("cannot encode the {endpoint} request as JSON")]
    Encode {
        /// The endpoint called.
        endpoint: String,
        /// serde_json's reason.
        #[source]
        source: serde_json::Error,
    },
    /// Connecting, TLS, sending or receiving failed before a complete reply arrived.
    #[error("cannot reach the coordinator at {url}")]
    Transport {
        /// The URL called.
        url: String,
        /// The transport's reason.
        #[source]
        source: ureq::Error,
    },
    /// No (complete) reply within the configured time.
    #[error("no reply from {url} within {limit:?} ({phase} timed out)")]
    Timeout {
        /// The URL called.
        url: String,
        /// Which stage timed out (`connect`, `global`, ...).
        phase: String,
        /// The bound that expired.
        limit: Duration,
    },
    /// The coordinator answered with a non-2xx, non-3xx status.
    #[error("{url} answered HTTP {status}{}", message_suffix(message))]
    Status {
        /// The endpoint called.
        endpoint: String,
        /// The URL called.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The coordinator's message: the error body, control characters removed, cut at
        /// [`limits::MAX_ERROR_MESSAGE_BYTES`] bytes (empty when there was none).
        message: String,
    },
    /// The coordinator (or something in front of it) answered with a redirect, which is not
    /// followed.
    #[error("{url} answered HTTP {status} redirecting to {location:?}; redirects are not followed (check api_url)")]
    Redirect {
        /// The URL called.
        url: String,
        /// The 3xx status code.
        status: u16,
        /// The `Location` header, sanitised and cut (empty when absent).
        location: String,
    },
    /// The reply body is larger than [`ClientOptions::max_response_bytes`].
    #[error("the reply of {url} exceeds {limit} bytes")]
    ResponseTooLarge {
        /// The URL called.
        url: String,
        /// The bound.
        limit: u64,
    },
    /// The reply is not the JSON the endpoint should return.
    #[error("the reply of {url} is not a valid {endpoint} response")]
    Decode {
        /// The endpoint called.
        endpoint: String,
        /// The URL called.
        url: String,
        /// serde_json's reason (about the reply, which holds no secrets).
        #[source]
        source: serde_json::Error,
    },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl ApiError {
    /// How to react to this error.
    pub fn kind(&self) -> ApiErrorKind {
        match self {
            Self::InvalidUrl { .. } | Self::InvalidEndpoint { .. } | Self::Encode { .. } => {
                ApiErrorKind::Local
            }
            Self::Transport { .. } | Self::Timeout { .. } => ApiErrorKind::Unavailable,
            Self::Status { status, .. } => match status {
                // Request Timeout and Too Many Requests say "not now", not "no".
                408 | 429 => ApiErrorKind::Unavailable,
                400..=499 => ApiErrorKind::Refused,
                _ => ApiErrorKind::Unavailable,
            },
            Self::Redirect { .. } | Self::ResponseTooLarge { .. } | Self::Decode { .. } => {
                ApiErrorKind::BadReply
            }
        }
    }

    /// The coordinator refused the request (4xx): retrying it unchanged will not help.
    pub fn is_refused(&self) -> bool {
        self.kind() == ApiErrorKind::Refused
    }

    /// The coordinator is unreachable, too slow or failing (transport, timeout, 5xx): the
    /// request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ApiErrorKind::Unavailable
    }

    /// The HTTP status, when the coordinator answered with an error or a redirect.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } | Self::Redirect { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A blocking client for one coordinator. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    /// `api_url` without trailing slashes; endpoints are appended after one `/`.
    base: String,
    /// `base` without userinfo, for errors and `Debug`.
    shown_base: String,
    options: ClientOptions,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("api_url", &self.shown_base)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the coordinator at `api_url` (conventionally ending in `/v1`; a trailing
    /// slash is ignored, as the original's `urljoin(api_url + "/", endpoint)` ignores it).
    pub fn new(api_url: &str, options: ClientOptions) -> Result<Self, ApiError> {
        let base = api_url.trim_end_matches('/').to_owned();
        let shown_base = without_userinfo(&base);
        let invalid = |reason| ApiError::InvalidUrl {
            url: shown_base.clone(),
            reason,
        };
        let uri: ureq::http::Uri = base.parse().map_err(|_| invalid("not a valid URL"))?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
            _ => return Err(invalid("the scheme must be http or https")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        // Appending "/endpoint" after a query or fragment would land inside it.
        if uri.query().is_some() || base.contains('#') {
            return Err(invalid("a query or fragment cannot take endpoint names"));
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(options.request_timeout))
            // 0: the 3xx answer comes back as is and becomes ApiError::Redirect.
            .max_redirects(0)
            .save_redirect_history(false)
            .http_status_as_error(false)
            .user_agent(options.user_agent.as_str())
            .accept(CONTENT_TYPE_JSON)
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            base,
            shown_base,
            options,
        })
    }

    /// The URL an endpoint is called at (userinfo removed).
    pub fn endpoint_url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.shown_base)
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// POST `body` as JSON to `<api_url>/<endpoint>` and decode the 2xx reply as `Resp`.
    pub fn call<Req, Resp>(&self, endpoint: &str, body: &Req) -> Result<Resp, ApiError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        if endpoint.is_empty()
            || !endpoint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ApiError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
            });
        }
        let url = self.endpoint_url(endpoint);
        let payload = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        let mut response = self
            .agent
            .post(format!("{}/{endpoint}", self.base))
            .header("Content-Type", CONTENT_TYPE_JSON)
            .send(&payload[..])
            .map_err(|e| self.transport_error(&url, e))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ApiError::Redirect {
                url,
                status,
                location: sanitise(&location, limits::MAX_REDIRECT_LOCATION_BYTES),
            });
        }
        if !(200..300).contains(&status) {
            // Whatever part of the body arrives is the message; a failure to read the rest
            // must not hide the status.
            let mut raw = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(limits::MAX_ERROR_BODY_READ)
                .read_to_end(&mut raw);
            return Err(ApiError::Status {
                endpoint: endpoint.to_owned(),
                url,
                status,
                message: coordinator_message(&raw),
            });
        }
        let raw = response
            .body_mut()
            .with_config()
            .limit(self.options.max_response_bytes)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => ApiError::ResponseTooLarge {
                    url: url.clone(),
                    limit: self.options.max_response_bytes,
                },
                other => self.transport_error(&url, other),
            })?;
        serde_json::from_slice(&raw).map_err(|source| ApiError::Decode {
            endpoint: endpoint.to_owned(),
            url,
            source,
        })
    }

    fn transport_error(&self, url: &str, error: ureq::Error) -> ApiError {
        let timed_out = |phase: String, connect: bool| ApiError::Timeout {
            url: url.to_owned(),
            phase,
            limit: if connect {
                self.options.connect_timeout
            } else {
                self.options.request_timeout
            },
        };
        match error {
            ureq::Error::Timeout(phase) => {
                timed_out(phase.to_string(), phase == ureq::Timeout::Connect)
            }
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                timed_out("socket".to_owned(), false)
            }
            source => ApiError::Transport {
                url: url.to_owned(),
                source,
            },
        }
    }

    /// `update_config`: the agent registers its machine and uploads its sources.
    pub fn update_config(&self, request: &UpdateConfigRequest) -> Result<EmptyResponse, ApiError> {
        self.call(endpoint::UPDATE_CONFIG, request)
    }

    /// `agent_ping_checkin`: the sources of the agent's machine that are due now.
    pub fn agent_ping_checkin(
        &self,
        request: &AgentPingRequest,
    ) -> Result<AgentPingCheckinResponse, ApiError> {
        self.call(endpoint::AGENT_PING_CHECKIN, request)
    }

    /// `agent_ping_restore`: every restorable source of the agent's machine.
    pub fn agent_ping_restore(
        &self,
        request: &AgentPingRequest,
    ) -> Result<AgentPingRestoreResponse, ApiError> {
        self.call(endpoint::AGENT_PING_RESTORE, request)
    }

    /// `storage_ping_checkin`: which sources of a connecting machine are due.
    pub fn storage_ping_checkin(
        &self,
        request: &StoragePingCheckinRequest,
    ) -> Result<StoragePingCheckinResponse, ApiError> {
        self.call(endpoint::STORAGE_PING_CHECKIN, request)
    }

    /// `storage_ping_source_update`: the outcome of backups of a machine's sources.
    pub fn storage_ping_source_update(
        &self,
        request: &StoragePingSourceUpdateRequest,
    ) -> Result<EmptyResponse, ApiError> {
        self.call(endpoint::STORAGE_PING_SOURCE_UPDATE, request)
    }

    /// `storage_update_config`: register or update the storage unit; returns its machines.
    pub fn storage_update_config(
        &self,
        request: &StorageUpdateConfigRequest,
    ) -> Result<StorageUpdateConfigResponse, ApiError> {
        self.call(endpoint::STORAGE_UPDATE_CONFIG, request)
    }

    /// `health`: database connectivity and row counts.
    pub fn health(&self) -> Result<HealthResponse, ApiError> {
        self.call(endpoint::HEALTH, &serde_json::Map::new())
    }
}

/// `url` with any `user:password@` in its authority replaced, so it can be shown.
fn without_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return sanitise(url, limits::MAX_REDIRECT_LOCATION_BYTES);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let shown = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    };
    sanitise(&shown, limits::MAX_REDIRECT_LOCATION_BYTES)
}

/// The message of an error body: a JSON string, a JSON object's `error`/`message`/`detail`,
/// or else the text itself; sanitised and bounded.
fn coordinator_message(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let from_json = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::String(s)) => Some(s),
        Ok(serde_json::Value::Object(map)) => limits::ERROR_MESSAGE_KEYS
            .iter()
            .find_map(|key| map.get(*key).and_then(|v| v.as_str()).map(str::to_owned)),
        _ => None,
    };
    sanitise(
        from_json.as_deref().unwrap_or(&text),
        limits::MAX_ERROR_MESSAGE_BYTES,
    )
}

/// Characters that reorder or hide text on a terminal without being `char::is_control`.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Text from the peer made safe for one log line: whitespace runs become one space, other
/// control and invisible formatting characters go, and the result is cut at `max_bytes` (on a
/// character boundary, marked with `…`).
fn sanitise(text: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_whitespace() {
            if out.is_empty() || out.ends_with(' ') {
                continue;
            }
            ' '
        } else if c.is_control() || is_invisible_format(c) {
            continue;
        } else {
            c
        };
        if out.len() + c.len_utf8() > max_bytes {
            out.truncate(out.trim_end().len());
            out.push('…');
            return out;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{ErrorKind, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::thread::JoinHandle;
    use std::time::Instant;

    use super::*;
    use crate::v1::{MachineRef, StorageCredentials, StorageMachine};

    /// Bound on every wait of these tests' servers.
    const BOUND: Duration = Duration::from_secs(20);
    const SECRET: &str = "S3CRET-never-shown";
    const HEALTH_JSON: &str = r#"{"healthy": true, "date": "2024-01-10T12:34:56+00:00", "counts": {"auth": 1, "storage": 2, "machine": 3, "source": 4, "filter_set": 0, "backup_log": 5}}"#;

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// One connection, or None once `BOUND` has passed.
    fn accept_within(listener: &TcpListener) -> Option<TcpStream> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(BOUND)).unwrap();
                    s.set_write_timeout(Some(BOUND)).unwrap();
                    return Some(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    }

    /// The head and the Content-Length body of one request.
    fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "request head cut short");
            raw.push(byte[0]);
        }
        let head = String::from_utf8(raw).unwrap();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        (head, body)
    }

    fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// A server answering one request with `reply`; the thread returns the request.
    fn serve_once(reply: Vec<u8>) -> (String, JoinHandle<(String, Vec<u8>)>) {
        let (l, port) = listener();
        let handle = std::thread::spawn(move || {
            let mut s = accept_within(&l).expect("the client never connected");
            let request = read_request(&mut s);
            let _ = s.write_all(&reply);
            request
        });
        (format!("http://127.0.0.1:{port}/v1"), handle)
    }

    fn client(base: &str) -> ApiClient {
        ApiClient::new(
            base,
            ClientOptions {
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(10),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    fn checkin_request() -> StoragePingCheckinRequest {
        StoragePingCheckinRequest {
            storage: StorageCredentials {
                name: "primary".into(),
                secret: SECRET.into(),
            },
            machine: MachineRef {
                uuid: "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11".into(),
            },
        }
    }

    fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    fn assert_no_secret(e: &ApiError) {
        let shown = format!("{e} {e:?} {:?}", std::error::Error::source(e));
        assert!(!shown.contains(SECRET), "secret in error: {shown}");
    }

    #[test]
    fn endpoint_joins_with_or_without_trailing_slashes() {
        for suffix in ["", "/", "//"] {
            let (base, server) = serve_once(response(
                "200 OK",
                &[("Content-Type", "application/json")],
                HEALTH_JSON.as_bytes(),
            ));
            let health = client(&format!("{base}{suffix}")).health().unwrap();
            assert!(health.healthy);
            assert_eq!(health.counts.backup_log, 5);
            let (head, body) = server.join().unwrap();
            assert!(
                head.starts_with("POST /v1/health HTTP/1.1\r\n"),
                "api_url with {suffix:?}: {head}"
            );
            assert_eq!(body, b"{}");
        }
    }

    #[test]
    fn sends_post_with_exact_json_content_type() {
        let (base, server) = serve_once(response(
            "200 OK",
            &[],
            br#"{"machine": {"uuid": "u", "environment_name": null, "service_name": null, "unit_name": "web-0", "scheduled_sources": {}}}"#,
        ));
        let reply = client(&base)
            .storage_ping_checkin(&checkin_request())
            .unwrap();
        assert_eq!(reply.machine.unit_name, "web-0");
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /v1/storage_ping_checkin HTTP/1.1\r\n"));
        assert_eq!(header_values(&head, "content-type"), ["application/json"]);
        assert_eq!(header_values(&head, "accept"), ["application/json"]);
        let agent = header_values(&head, "user-agent");
        assert_eq!(agent.len(), 1);
        assert!(agent[0].starts_with("turku/"), "{agent:?}");
        let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent, serde_json::to_value(checkin_request()).unwrap());
    }

    #[test]
    fn error_status_carries_the_coordinators_message() {
        let (base, server) = serve_once(response(
            "403 Forbidden",
            &[("Content-Type", "text/html; charset=utf-8")],
            b"Bad auth",
        ));
        let e = client(&base)
            .storage_ping_checkin(&checkin_request())
            .unwrap_err();
        server.join().unwrap();
        match &e {
            ApiError::Status {
                endpoint,
                status,
                message,
                url,
            } => {
                assert_eq!(endpoint, "storage_ping_checkin");
                assert_eq!(*status, 403);
                assert_eq!(message, "Bad auth");
                assert_eq!(url, &format!("{base}/storage_ping_checkin"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.is_refused() && !e.is_unavailable());
        assert_eq!(e.status(), Some(403));
        assert!(
            e.to_string().ends_with("answered HTTP 403: Bad auth"),
            "{e}"
        );
        assert_no_secret(&e);

        let (base, server) = serve_once(response(
            "503 Service Unavailable",
            &[("Content-Type", "application/json")],
            br#"{"error": "busy, retry", "code": 7}"#,
        ));
        let e = client(&base).health().unwrap_err();
        server.join().unwrap();
        assert!(e.is_unavailable() && !e.is_refused(), "{e:?}");
        assert!(e.to_string().ends_with("HTTP 503: busy, retry"), "{e}");
    }

    #[test]
    fn error_message_is_sanitised_and_bounded() {
        let mut body = "Validation error:\n\t\x1b[31mbad\u{202E}txet\r\n".to_owned();
        body.push_str(&"é".repeat(4000));
        let (base, server) = serve_once(response("400 Bad Request", &[], body.as_bytes()));
        let e = client(&base).health().unwrap_err();
        server.join().unwrap();
        let ApiError::Status { message, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            message.starts_with("Validation error: [31mbadtxet éé"),
            "{message}"
        );
        assert!(!message.chars().any(|c| c.is_control() || c == '\u{202E}'));
        assert!(message.len() <= limits::MAX_ERROR_MESSAGE_BYTES + '…'.len_utf8());
        assert!(message.ends_with('…'));
        // An empty body (Django's 405) leaves no dangling colon.
        let (base, server) = serve_once(response(
            "405 Method Not Allowed",
            &[("Allow", "POST")],
            b"",
        ));
        let e = client(&base).health().unwrap_err();
        server.join().unwrap();
        assert!(e.to_string().ends_with("answered HTTP 405"), "{e}");
    }

    #[test]
    fn oversize_reply_is_refused() {
        let mut body = HEALTH_JSON.to_owned();
        body.push_str(&" ".repeat(2048));
        let (base, server) = serve_once(response("200 OK", &[], body.as_bytes()));
        let c = ApiClient::new(
            &base,
            ClientOptions {
                max_response_bytes: 1024,
                request_timeout: Duration::from_secs(10),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let e = c.health().unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(e, ApiError::ResponseTooLarge { limit: 1024, .. }),
            "{e:?}"
        );
        assert_eq!(e.kind(), ApiErrorKind::BadReply);
    }

    #[test]
    fn default_limit_takes_a_10000_machine_storage_config() {
        // A 4096-bit RSA public key line is about 740 characters.
        let key = format!("ssh-rsa {} root@host.example.com", "A".repeat(716));
        let machines: BTreeMap<String, StorageMachine> = (0..10_000)
            .map(|i| {
                (
                    format!("00000000-0000-4000-8000-{i:012}"),
                    StorageMachine {
                        environment_name: Some("production-environment".into()),
                        service_name: Some("a-reasonably-long-service-name".into()),
                        unit_name: format!("machine-{i}.datacentre.example.com"),
                        comment: Some("c".repeat(200)),
                        ssh_public_key: key.clone(),
                    },
                )
            })
            .collect();
        let body = serde_json::to_vec(&StorageUpdateConfigResponse { machines }).unwrap();
        // Larger than ureq's own default body limit (10 MB), well under ours.
        assert!(body.len() > 11 << 20, "{}", body.len());
        assert!((body.len() as u64) < limits::MAX_RESPONSE_BYTES);
        let (base, server) = serve_once(response("200 OK", &[], &body));
        let reply = client(&base)
            .storage_update_config(&StorageUpdateConfigRequest::default())
            .unwrap();
        server.join().unwrap();
        assert_eq!(reply.machines.len(), 10_000);
    }

    #[test]
    fn silent_server_hits_the_timeout() {
        let (l, port) = listener();
        let (release, released) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut s = accept_within(&l).expect("the client never connected");
            read_request(&mut s);
            // Hold the connection open without answering until the test is done.
            let _ = released.recv_timeout(BOUND);
        });
        let c = ApiClient::new(
            &format!("http://127.0.0.1:{port}/v1"),
            ClientOptions {
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_millis(300),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let e = c.storage_ping_checkin(&checkin_request()).unwrap_err();
        drop(release);
        server.join().unwrap();
        match &e {
            ApiError::Timeout { limit, .. } => assert_eq!(*limit, Duration::from_millis(300)),
            other => panic!("{other:?}"),
        }
        assert!(e.is_unavailable());
        assert_no_secret(&e);
    }

    #[test]
    fn redirect_is_not_followed() {
        let (target, target_port) = listener();
        target.set_nonblocking(true).unwrap();
        let location = format!("http://127.0.0.1:{target_port}/v1/storage_ping_checkin");
        let (base, server) = serve_once(response(
            "307 Temporary Redirect",
            &[("Location", &location)],
            b"",
        ));
        let c = ApiClient::new(
            &base,
            ClientOptions {
                request_timeout: Duration::from_secs(3),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let e = c.storage_ping_checkin(&checkin_request()).unwrap_err();
        server.join().unwrap();
        match &e {
            ApiError::Redirect {
                status,
                location: shown,
                ..
            } => {
                assert_eq!(*status, 307);
                assert_eq!(shown, &location);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.kind(), ApiErrorKind::BadReply);
        assert!(e.to_string().contains("307"), "{e}");
        assert_eq!(
            target.accept().map(|_| ()).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "the secret-carrying POST was re-sent to the redirect target"
        );
    }

    #[test]
    fn non_json_reply_is_a_decode_error() {
        let (base, server) = serve_once(response(
            "200 OK",
            &[("Content-Type", "text/html")],
            b"<html>login page</html>",
        ));
        let e = client(&base)
            .storage_ping_checkin(&checkin_request())
            .unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&e, ApiError::Decode { endpoint, .. } if endpoint == "storage_ping_checkin"),
            "{e:?}"
        );
        assert_eq!(e.kind(), ApiErrorKind::BadReply);
        assert!(e.to_string().contains("storage_ping_checkin"), "{e}");
        assert_no_secret(&e);
    }

    #[test]
    fn refused_connection_is_unavailable_and_names_the_url() {
        let (l, port) = listener();
        drop(l);
        let e = client(&format!("http://127.0.0.1:{port}/v1"))
            .storage_ping_checkin(&checkin_request())
            .unwrap_err();
        assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
        assert!(e.is_unavailable());
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{port}/v1/storage_ping_checkin")),
            "{e}"
        );
        assert_no_secret(&e);
    }

    #[test]
    fn https_speaks_tls() {
        let (l, port) = listener();
        let server = std::thread::spawn(move || {
            let mut s = accept_within(&l).expect("the client never connected");
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap();
            first[0]
        });
        let e = client(&format!("https://127.0.0.1:{port}/v1"))
            .health()
            .unwrap_err();
        // 0x16: a TLS handshake record (the ClientHello), so rustls with ring is wired in.
        assert_eq!(server.join().unwrap(), 0x16);
        assert!(e.is_unavailable(), "{e:?}");
    }

    #[test]
    fn invalid_urls_and_endpoints_are_refused_locally() {
        for url in [
            "ftp://turku.example.com/v1",
            "turku.example.com/v1",
            "http:///v1",
            "http://turku.example.com/v1?x=1",
            "",
        ] {
            let e = ApiClient::new(url, ClientOptions::default()).unwrap_err();
            assert!(matches!(e, ApiError::InvalidUrl { .. }), "{url}: {e:?}");
            assert_eq!(e.kind(), ApiErrorKind::Local);
        }
        let c = client("http://127.0.0.1:9/v1");
        for endpoint in ["", "../admin", "health?x", "a/b"] {
            let e = c.call::<_, EmptyResponse>(endpoint, &()).unwrap_err();
            assert!(matches!(e, ApiError::InvalidEndpoint { .. }), "{e:?}");
        }
    }

    #[test]
    fn userinfo_is_never_shown() {
        let c = client("http://turku:pa55word@127.0.0.1:9/v1/");
        let shown = format!("{c:?} {}", c.endpoint_url("health"));
        assert!(!shown.contains("pa55word"), "{shown}");
        assert_eq!(c.endpoint_url("health"), "http://***@127.0.0.1:9/v1/health");
        let e = ApiClient::new("ftp://turku:pa55word@h/v1", ClientOptions::default()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("pa55word"), "{e}");
    }

    #[test]
    fn status_classes() {
        let status = |status| ApiError::Status {
            endpoint: "health".into(),
            url: "u".into(),
            status,
            message: String::new(),
        };
        for s in [400, 403, 404, 405] {
            assert_eq!(status(s).kind(), ApiErrorKind::Refused, "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(status(s).kind(), ApiErrorKind::Unavailable, "{s}");
        }
    }

    #[test]
    fn client_can_be_shared_across_threads() {
        fn shareable<T: Clone + Send + Sync + fmt::Debug + 'static>() {}
        shareable::<ApiClient>();
        fn error_crosses_threads<T: Send + Sync + std::error::Error + 'static>() {}
        error_crosses_threads::<ApiError>();
    }
}
