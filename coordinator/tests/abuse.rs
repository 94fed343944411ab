//! The coordinator under abuse: a flood of requests that need Argon2, clients that give up
//! while queued, a guesser hammering one principal, and a CLI writer holding the database.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use turku_coordinator::{db, AppState, Config};

/// Every wait in these tests ends by this bound.
const BOUND: Duration = Duration::from_secs(20);

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Holds the only hash slot from a plain thread until dropped.
struct SlotHolder {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlotHolder {
    async fn take(state: &Arc<AppState>) -> Self {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let state = Arc::clone(state);
        let thread = std::thread::spawn(move || {
            state.with_hash_slot(|| {
                let _ = held_tx.send(());
                let _ = release_rx.recv_timeout(3 * BOUND);
            });
        });
        tokio::time::timeout(BOUND, held_rx)
            .await
            .expect("slot taken in time")
            .expect("holder alive");
        Self {
            release: Some(release_tx),
            thread: Some(thread),
        }
    }

    fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("holder thread");
        }
    }
}

impl Drop for SlotHolder {
    fn drop(&mut self) {
        self.release_now();
    }
}

fn one_slot(queue: usize) -> Config {
    Config {
        max_concurrent_hashes: 1,
        max_queued_hashes: queue,
        ..fast_config()
    }
}

fn new_storage(srv: &Server, name: &str) -> Value {
    let mut body = storage_config(srv, true);
    body["storage"]["name"] = json!(name);
    body
}

/// Beyond the running slots and the queue, a request needing Argon2 gets 503 with
/// `Retry-After` at once; cached and hash-free requests are still served; the queued ones
/// complete once the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_hash_queue_answers_503_with_retry_after() {
    let srv = start_with(one_slot(1)).await;
    let holder = SlotHolder::take(&srv.state).await;
    // Slot count 1 + queue 1: two requests are admitted and wait.
    let queued: Vec<_> = ["s1", "s2"]
        .into_iter()
        .map(|name| {
            let body = new_storage(&srv, name);
            let addr = srv.addr;
            tokio::spawn(async move { post(addr, "storage_update_config", &body).await })
        })
        .collect();
    let state = Arc::clone(&srv.state);
    wait_until("two requests queued", || {
        state.hash_requests_in_flight() == 2
    })
    .await;

    let r = tokio::time::timeout(
        BOUND,
        post(srv.addr, "storage_update_config", &new_storage(&srv, "s3")),
    )
    .await
    .expect("a request beyond the queue is answered at once, not queued");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.body, turku_coordinator::constants::admission::BUSY_BODY);
    // Requests that need no hash are unaffected.
    assert_eq!(post(srv.addr, "health", &json!({})).await.status, 200);

    holder.release();
    for q in queued {
        let r = tokio::time::timeout(BOUND, q)
            .await
            .expect("queued request done")
            .expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(srv.state.hash_requests_in_flight(), 0);
}

/// A client that goes away while its request waits for a hash slot leaves the queue at
/// once, and its hash is never computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_request_is_never_hashed() {
    let srv = start_with(one_slot(4)).await;
    let holder = SlotHolder::take(&srv.state).await;
    assert_eq!(srv.state.hashes_started(), 1);

    let body = new_storage(&srv, "gone").to_string();
    let mut client = TcpStream::connect(srv.addr).await.expect("connect");
    let head = format!(
        "POST /v1/storage_update_config HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.expect("head");
    client.write_all(body.as_bytes()).await.expect("body");
    let state = Arc::clone(&srv.state);
    wait_until("request queued", || state.hash_requests_in_flight() == 1).await;
    drop(client);
    // It leaves the queue while the slot is still held.
    wait_until("abandoned request leaves the queue", || {
        state.hash_requests_in_flight() == 0
    })
    .await;

    holder.release();
    assert_eq!(srv.state.hashes_started(), 1, "the abandoned hash ran");
    assert!(db::storage_by_name(&srv.state.db.conn(), "gone")
        .expect("query")
        .is_none());
    // The server goes on as usual.
    let r = post(
        srv.addr,
        "storage_update_config",
        &new_storage(&srv, "kept"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// After a burst of failed secrets a principal is refused with 503 and `Retry-After`,
/// without hashing, even with the right secret; other principals are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_principal_is_refused_without_hashing() {
    let srv = start_with(Config {
        auth_failure_burst: 3,
        auth_failure_refill: Duration::from_secs(3600),
        ..fast_config()
    })
    .await;
    let mut wrong = new_storage(&srv, "s1");
    wrong["auth"]["secret"] = json!("guess");
    for _ in 0..3 {
        let r = post(srv.addr, "storage_update_config", &wrong).await;
        assert_eq!((r.status, r.body.as_str()), (403, "Bad auth"));
    }
    assert_eq!(srv.state.hashes_started(), 3);
    for body in [&wrong, &new_storage(&srv, "s1")] {
        let r = post(srv.addr, "storage_update_config", body).await;
        assert_eq!(r.status, 503, "{}", r.body);
        let wait: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=3600).contains(&wait), "{wait}");
    }
    assert_eq!(
        srv.state.hashes_started(),
        3,
        "a throttled principal was hashed"
    );
    // The machine registration Auth is another principal.
    let mut other = machine_config(&srv, true);
    other["auth"]["secret"] = json!("guess");
    assert_eq!(post(srv.addr, "update_config", &other).await.status, 403);
    assert_eq!(srv.state.hashes_started(), 4);
}

/// A CLI writer holding the database lock makes check-ins wait, but not the runtime: on a
/// single-threaded runtime, requests that need no database are still answered meanwhile,
/// and the check-in completes once the lock goes.
#[tokio::test]
async fn database_lock_does_not_stall_the_runtime() {
    let srv = registered().await;
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        200,
        "warm the secret cache"
    );
    // Far beyond this test's own bound, so the check-in is still waiting when it ends.
    srv.state
        .db
        .set_busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    let path: String = srv
        .state
        .db
        .conn()
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |r| r.get(0),
        )
        .expect("database path");
    let writer = rusqlite::Connection::open(&path).expect("second connection");
    writer
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");

    let addr = srv.addr;
    let checkin =
        tokio::spawn(async move { post(addr, "agent_ping_checkin", &agent_creds()).await });
    for _ in 0..20 {
        let r = tokio::time::timeout(BOUND, raw(addr, "GET", "/nowhere", None, b""))
            .await
            .expect("404 in time");
        assert_eq!(r.status, 404);
        let r = tokio::time::timeout(
            BOUND,
            raw(addr, "POST", "/v1/health", Some("text/plain"), b"{}"),
        )
        .await
        .expect("400 in time");
        assert_eq!(r.status, 400);
        if checkin.is_finished() {
            let r = checkin.await.expect("task");
            panic!(
                "the check-in finished while the lock was held: {} {}",
                r.status, r.body
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.execute_batch("COMMIT").expect("release the lock");
    let r = tokio::time::timeout(BOUND, checkin)
        .await
        .expect("check-in done once the lock went")
        .expect("task");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A guesser spending a principal's failures from one address (then polling for each refilled
/// token) does not lock out its legitimate clients elsewhere: a registration with the right
/// secret from another address is verified, while the guesser stays refused unhashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_throttle_is_per_client_address() {
    let srv = start_with(Config {
        auth_failure_burst: 3,
        auth_failure_refill: Duration::from_secs(3600),
        ..fast_config()
    })
    .await;
    let guesser: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let mut wrong = new_storage(&srv, "s1");
    wrong["auth"]["secret"] = json!("guess");
    for _ in 0..3 {
        let r = post_from(guesser, srv.addr, "storage_update_config", &wrong).await;
        assert_eq!((r.status, r.body.as_str()), (403, "Bad auth"));
    }
    let r = post_from(guesser, srv.addr, "storage_update_config", &wrong).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(srv.state.hashes_started(), 3);

    // The real registrant, from 127.0.0.1.
    let r = post(srv.addr, "storage_update_config", &new_storage(&srv, "s2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        srv.state.hashes_started(),
        5,
        "registration secret + new storage secret"
    );

    // Its success does not give the guesser a fresh burst.
    let r = post_from(guesser, srv.addr, "storage_update_config", &wrong).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(srv.state.hashes_started(), 5, "the guesser was hashed");
}

/// Takes the database's write lock from a second connection, as a CLI command does, until
/// dropped or released.
struct DbWriter(Option<rusqlite::Connection>);

impl DbWriter {
    fn lock(state: &AppState) -> Self {
        let path: String = state
            .db
            .conn()
            .query_row(
                "SELECT file FROM pragma_database_list WHERE name = 'main'",
                [],
                |r| r.get(0),
            )
            .expect("database path");
        let writer = rusqlite::Connection::open(&path).expect("second connection");
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        Self(Some(writer))
    }

    fn release(mut self) {
        if let Some(w) = self.0.take() {
            w.execute_batch("COMMIT").expect("release the lock");
        }
    }
}

/// While a CLI writer holds the database, fast-path requests beyond the limit are shed with
/// 503 and `Retry-After` at once instead of each holding a blocking thread; once the lock
/// goes, the waiting ones complete and new ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_sheds_load_while_the_database_is_locked() {
    let srv = start_with(Config {
        max_fast_path_tasks: 2,
        ..fast_config()
    })
    .await;
    for (endpoint, body) in [
        ("storage_update_config", storage_config(&srv, true)),
        ("update_config", machine_config(&srv, true)),
        ("agent_ping_checkin", agent_creds()),
    ] {
        let r = post(srv.addr, endpoint, &body).await;
        assert_eq!(r.status, 200, "{endpoint}: {}", r.body);
    }
    // Far beyond this test's own bound, so the held check-ins are still waiting when it ends.
    srv.state
        .db
        .set_busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    let writer = DbWriter::lock(&srv.state);

    let addr = srv.addr;
    let held: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move { post(addr, "agent_ping_checkin", &agent_creds()).await })
        })
        .collect();
    wait_until("both check-ins wait for the database", || {
        srv.state.fast_requests_in_flight() == 2
    })
    .await;
    let extra: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move { post(addr, "agent_ping_checkin", &agent_creds()).await })
        })
        .collect();
    for task in extra {
        let r = tokio::time::timeout(BOUND, task)
            .await
            .expect("an extra request was answered in time (not queued)")
            .expect("task");
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    assert!(
        held.iter().all(|t| !t.is_finished()),
        "a check-in finished while the lock was held"
    );

    writer.release();
    for task in held {
        let r = tokio::time::timeout(BOUND, task)
            .await
            .expect("check-in done once the lock went")
            .expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    wait_until("the fast path drains", || {
        srv.state.fast_requests_in_flight() == 0
    })
    .await;
    let r = post(addr, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
