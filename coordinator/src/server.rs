//! The HTTP layer: routing, the method rule, and moving each request to a blocking thread.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;
use turku_api_types::constants::{
    endpoint, error_body, ALLOWED_METHOD, CONTENT_TYPE_ERROR, CONTENT_TYPE_JSON,
};

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

/// Serve until `shutdown` resolves, then finish in-flight requests.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
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
    // Cached check-ins only take short SQLite calls (tens of microseconds under one mutex):
    // run them right here, which saves two thread hand-offs per request.
    if let Some(reply) = handlers::try_handle_fast(&state, &name, content_type.as_deref(), &body) {
        return into_response(reply);
    }
    // Argon2 (~170 ms) must not stall an async worker.
    let joined = tokio::task::spawn_blocking(move || {
        handlers::handle(&state, &name, content_type.as_deref(), &body)
    })
    .await;
    match joined {
        Ok(reply) => into_response(reply),
        Err(e) => {
            tracing::error!(error = %e, "request handler panicked");
            text(StatusCode::INTERNAL_SERVER_ERROR, error_body::SERVER_ERROR)
        }
    }
}

fn into_response(reply: Reply) -> Response {
    let ct = if reply.json {
        CONTENT_TYPE_JSON
    } else {
        CONTENT_TYPE_ERROR
    };
    (
        reply.status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
        reply.body,
    )
        .into_response()
}
