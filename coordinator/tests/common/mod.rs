//! Shared helpers: a coordinator on 127.0.0.1:0 and a minimal raw HTTP/1.1 client, so tests
//! control every byte (methods, content types, malformed bodies).

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use turku_coordinator::admin::{self, AuthKind};
use turku_coordinator::db::Db;
use turku_coordinator::secrets::HashParams;
use turku_coordinator::{server, AppState, Config};

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub machine_reg: String,
    pub storage_reg: String,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub fn fast_config() -> Config {
    Config {
        hash_params: HashParams::insecure_fast(),
        ..Config::default()
    }
}

pub async fn start() -> Server {
    start_with(fast_config()).await
}

pub async fn start_with(config: Config) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("turku.sqlite3")).expect("open db");
    let params = config.hash_params;
    let now = Utc::now();
    let machine_reg =
        admin::auth_create(&db, AuthKind::MachineReg, None, true, params, now).expect("auth");
    let storage_reg =
        admin::auth_create(&db, AuthKind::StorageReg, None, true, params, now).expect("auth");
    let state = Arc::new(AppState::new(db, config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        server::run(listener, st, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Server {
        addr,
        state,
        machine_reg: machine_reg.trim().to_owned(),
        storage_reg: storage_reg.trim().to_owned(),
        _dir: dir,
        _shutdown: tx,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Send one request over a fresh connection and read the whole response.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    raw_from(None, addr, method, path, content_type, body).await
}

/// [`raw`] from a chosen local address (on Linux all of 127/8 reaches a loopback listener,
/// so 127.0.0.2 is a second client).
pub async fn raw_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut s = match source {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            }
            .expect("socket");
            socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
            socket.connect(addr).await.expect("connect")
        }
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// POST JSON to `/v1/<endpoint>` from a chosen local address.
pub async fn post_from(source: IpAddr, addr: SocketAddr, endpoint: &str, body: &Value) -> Resp {
    raw_from(
        Some(source),
        addr,
        "POST",
        &format!("/v1/{endpoint}"),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await
}

/// POST JSON to `/v1/<endpoint>`.
pub async fn post(addr: SocketAddr, endpoint: &str, body: &Value) -> Resp {
    raw(
        addr,
        "POST",
        &format!("/v1/{endpoint}"),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await
}

pub const MACHINE_UUID: &str = "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";
pub const MACHINE_SECRET: &str = "Zy0lLtKH6ZL7u4ahdKUqYHXUyd7U0w";
pub const STORAGE_SECRET: &str = "storage-secret";
pub const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey root@storage1";
pub const AGENT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAgentKey turku";

pub fn storage_config(srv: &Server, with_auth: bool) -> Value {
    let mut v = serde_json::json!({
        "storage": {
            "name": "storage1", "secret": STORAGE_SECRET,
            "ssh_ping_host": "storage1.example.com", "ssh_ping_port": 2222, "ssh_ping_user": "turku-ping",
            "ssh_ping_host_keys": [HOST_KEY],
            "space_total": 953674.31, "space_available": 512000.0, "published": true
        }
    });
    if with_auth {
        v["auth"] = serde_json::json!({"name": "Storage Registrations", "secret": srv.storage_reg});
    }
    v
}

pub fn machine_config(srv: &Server, with_auth: bool) -> Value {
    let mut v = serde_json::json!({
        "machine": {
            "uuid": MACHINE_UUID, "secret": MACHINE_SECRET,
            "environment_name": null, "service_name": "web", "unit_name": "web-0",
            "ssh_public_key": AGENT_KEY, "published": true,
            "sources": {
                "etc": {"path": "/etc", "frequency": "daily", "exclude": ["*.bak"], "filter": ["merge common", "- *.tmp"]},
                "home": {"path": "/home", "frequency": "hourly", "bwlimit": 1000, "snapshot_mode": "link-dest",
                         "retention": "last 3 days", "preserve_hard_links": true, "unknown_key": 1}
            }
        }
    });
    if with_auth {
        v["auth"] = serde_json::json!({"name": "Machine Registrations", "secret": srv.machine_reg});
    }
    v
}

/// A registered storage and machine (the usual starting point).
pub async fn registered() -> Server {
    let srv = start().await;
    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, true),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(srv.addr, "update_config", &machine_config(&srv, true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    srv
}

pub fn agent_creds() -> Value {
    serde_json::json!({"machine": {"uuid": MACHINE_UUID, "secret": MACHINE_SECRET}})
}

pub fn storage_creds(extra: Value) -> Value {
    let mut v = serde_json::json!({"storage": {"name": "storage1", "secret": STORAGE_SECRET}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}
