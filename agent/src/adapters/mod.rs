//! The thin adapters of the binary: files, the run lock, signals, child processes, and the
//! two commands' flows.

pub mod files;
pub mod ping;
pub mod process;
pub mod signals;
pub mod update_config;

use std::time::Duration;

use anyhow::{Context, Result};
use turku_api_types::client::{ApiClient, ClientOptions};

use turku_agent::constants::limits;

/// The coordinator client for `api_url`.
pub fn api_client(api_url: &str) -> Result<ApiClient> {
    ApiClient::new(
        api_url,
        ClientOptions {
            connect_timeout: limits::API_CONNECT_TIMEOUT,
            request_timeout: limits::API_REQUEST_TIMEOUT,
            ..ClientOptions::default()
        },
    )
    .context("api_url is not usable")
}

/// Sleeps a random time up to `wait` seconds, as `--wait` asks (spreads a fleet's cron
/// jobs); returns early on a signal.
pub fn random_wait(wait: Option<f64>) {
    let Some(wait) = wait.filter(|w| w.is_finite() && *w > 0.0) else {
        return;
    };
    let seconds = rand::Rng::gen_range(&mut rand::rngs::OsRng, 0.0..wait);
    tracing::debug!("waiting {seconds:.1} s");
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    while std::time::Instant::now() < deadline && signals::received().is_none() {
        std::thread::sleep(limits::CHILD_POLL);
    }
}
