//! The HTTP layer: routing, the method rule, moving each request to a blocking thread, and
//! admission to the hash path.
//!
//! No SQLite call runs on an async worker: a statement can wait up to the busy timeout for a
//! CLI writer's lock (and the connection mutex behind it), which would stall every request on
//! that worker. The fast path (everything but Argon2) has a bound on requests in flight, and
//! requests that need Argon2 then pass a bounded admission: either full answers 503 with
//! `Retry-After` at once, and a client that goes away while queued never gets its hash run.
//! The peer's address goes to the handlers, whose failure throttle keys on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use turku_api_types::constants::{
    endpoint, error_body, ALLOWED_METHOD, CONTENT_TYPE_ERROR, CONTENT_TYPE_JSON,
};

use crate::admission::Abandoned;
use crate::constants::MAX_BODY_BYTES;
use crate::handlers::{self, Reply};
use crate::state::AppState;

/// The coordinator's router: `POST /v1/<endpoint>` for the seven endpoints, 404 elsewhere.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/{name}", any(v1))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then finish in-flight requests. Requests carry their
/// peer's address (for the failure throttle).
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_ERROR),
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, error_body::NOT_FOUND)
}

async fn v1(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    // Absent when the router is served without connect info: failures are then throttled
    // per principal alone.
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // URL resolution comes first in Django: unknown names are 404 whatever the method.
    if !endpoint::ALL.contains(&name.as_str()) {
        return text(StatusCode::NOT_FOUND, error_body::NOT_FOUND);
    }
    if method != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body::METHOD_NOT_ALLOWED,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHOD));
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let client = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    // Everything but Argon2 (cached check-ins, the bulk of the traffic) first, on a blocking
    // thread too: a statement may wait for another process's lock on the database.
    let Some(fast_ticket) = state.admit_fast() else {
        tracing::debug!(endpoint = %name, "fast path full");
        return into_response(handlers::busy_reply(state.config.busy_retry_after));
    };
    let fast = {
        let (state, name, content_type, body) = (
            Arc::clone(&state),
            name.clone(),
            content_type.clone(),
            body.clone(),
        );
        // The ticket moves to the thread: a client that goes away does not free the place
        // of a statement still waiting for the database.
        tokio::task::spawn_blocking(move || {
            let _ticket = fast_ticket;
            handlers::try_handle_fast(&state, client, &name, content_type.as_deref(), &body)
        })
        .await
    };
    match fast {
        Ok(Some(reply)) => return into_response(reply),
        Ok(None) => {}
        Err(e) => return panicked(&e),
    }
    let Some(ticket) = state.admit() else {
        tracing::debug!(endpoint = %name, "hash queue full");
        return into_response(handlers::busy_reply(state.config.busy_retry_after));
    };
    // Dropped with this future when the client goes away: the queued request then leaves
    // the hash queue without hashing.
    let abandon = AbandonOnDrop {
        state: Arc::clone(&state),
        flag: Abandoned::default(),
        armed: true,
    };
    let flag = abandon.flag.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _ticket = ticket;
        handlers::handle_unless_abandoned(
            &state,
            client,
            &name,
            content_type.as_deref(),
            &body,
            Some(&flag),
        )
    })
    .await;
    abandon.disarm();
    match joined {
        Ok(reply) => into_response(reply),
        Err(e) => panicked(&e),
    }
}

fn panicked(e: &tokio::task::JoinError) -> Response {
    tracing::error!(error = %e, "request handler panicked");
    text(StatusCode::INTERNAL_SERVER_ERROR, error_body::SERVER_ERROR)
}

struct AbandonOnDrop {
    state: Arc<AppState>,
    flag: Abandoned,
    armed: bool,
}

impl AbandonOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.state.abandon(&self.flag);
        }
    }
}

fn into_response(reply: Reply) -> Response {
    let ct = if reply.json {
        CONTENT_TYPE_JSON
    } else {
        CONTENT_TYPE_ERROR
    };
    let mut response = (
        reply.status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
        reply.body,
    )
        .into_response();
    if let Some(secs) = reply.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
