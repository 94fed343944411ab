//! Error types of the coordinator library.

use axum::http::StatusCode;
use turku_api_types::constants::error_body;

use crate::constants::admission::BUSY_BODY;

/// Failures of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode (corrupt or hand-edited row).
    #[error("corrupt {what} in database: {value:?}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// Creating the database file or setting its mode failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The schema is newer than this program.
    #[error("database schema version {found} is newer than supported version {supported}")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
}

/// An API answer other than 200, mapped one-to-one onto the original's responses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a short text body.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 403 `Bad auth`; the reason is for logs only and never sent.
    #[error("bad auth ({0})")]
    BadAuth(&'static str),
    /// 404 with a short text body.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// 500; details are logged, never sent.
    #[error("internal error: {0}")]
    Internal(#[from] DbError),
    /// Not an answer: the request needs Argon2 and must be retried on a blocking thread
    /// (see `handlers::try_handle_fast`). Raised before any write.
    #[error("request needs a blocking thread")]
    WouldBlock,
    /// 503 with `Retry-After`: the hash queue is full, or this principal failed too often
    /// and is refused without hashing for a while.
    #[error("busy, retry after {retry_after:?}")]
    Busy {
        /// How long the client should wait.
        retry_after: std::time::Duration,
    },
    /// Not an answer: the client went away while the request waited for a hash slot, so it
    /// stopped before hashing or writing anything.
    #[error("client gone before its hash ran")]
    Abandoned,
}

impl ApiError {
    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BadAuth(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) | Self::WouldBlock => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Busy { .. } | Self::Abandoned => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Text body of this error, as the original sends it.
    pub fn body(&self) -> String {
        match self {
            Self::BadRequest(msg) => msg.clone(),
            Self::BadAuth(_) => error_body::BAD_AUTH.to_owned(),
            Self::NotFound(msg) => (*msg).to_owned(),
            Self::Internal(_) | Self::WouldBlock => error_body::SERVER_ERROR.to_owned(),
            Self::Busy { .. } | Self::Abandoned => BUSY_BODY.to_owned(),
        }
    }

    /// Whole seconds for a `Retry-After` header, if this answer carries one (at least 1, so
    /// a client never retries at once).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Busy { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            _ => None,
        }
    }

    /// A Django-style `Validation error: {'field': ['message']}` (400).
    pub fn validation(field: &str, message: &str) -> Self {
        Self::BadRequest(format!(
            "{}{{{}: [{}]}}",
            error_body::VALIDATION_ERROR_PREFIX,
            py_repr(field),
            py_repr(message)
        ))
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Internal(DbError::Sqlite(e))
    }
}

/// Python `repr()` of a string, as Django's message dicts print them.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_message_looks_like_django() {
        let e = ApiError::validation("uuid", "Machine with this Uuid already exists.");
        assert_eq!(
            e.body(),
            "Validation error: {'uuid': ['Machine with this Uuid already exists.']}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b"), "'a\\'\"b'");
    }
}
