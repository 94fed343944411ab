//! The Turku coordinator (`turku-api`): a drop-in replacement for the original Django
//! turku-api, speaking its `/v1` JSON API exactly (`spec/turku.md` §1).
//!
//! Layout, from the wire inwards:
//! - [`server`]: axum router; checks the method and hands the body to [`handlers`] on a
//!   blocking thread (no SQLite call runs on an async worker); [`admission`] bounds the
//!   requests waiting for Argon2 and [`throttle`] refuses principals that keep failing.
//! - [`handlers`]: the seven endpoints as synchronous functions over bytes (also the fuzz
//!   entry point), following the original's order of checks and error answers.
//! - [`schedule`] and [`cronhash`]: the `frequency` grammar and next-run computation with
//!   CRC-32 hashed jitter; croniter-compatible `cron` frequencies.
//! - [`secrets`] and [`cache`]: Django-format Argon2id/PBKDF2 hashes and the verified-secret
//!   cache that makes check-ins cheap.
//! - [`filters`], [`placement`], [`health`], [`validate`]: the remaining domain rules.
//! - [`db`] and [`models`]: SQLite (WAL) with Django-compatible tables and encodings.
//! - [`admin`]: the management commands behind the `turku-api` subcommands.
//!
//! Deliberate deviations from the original are listed in `DEVIATIONS.md`.

pub mod admin;
pub mod admission;
pub mod cache;
pub mod constants;
pub mod cronhash;
pub mod db;
pub mod error;
pub mod filters;
/// The fuzz targets' bodies, shared with the replay of their committed seeds.
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod health;
pub mod models;
pub mod placement;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod state;
pub mod throttle;
pub mod validate;

pub use error::{ApiError, DbError};
pub use state::{AppState, Config};
