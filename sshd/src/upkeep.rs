//! The daemon's background work: keeping the machines' keys current and collecting garbage
//! after backups.
//!
//! Keys: [`refresh`] registers with the coordinator (`storage_update_config`, which also
//! publishes our host keys and free space) and takes the machines in its reply, plus the
//! operator's static key file, as the new authorized set; it runs at start, every
//! `refresh_interval`, on SIGHUP, and (rate-limited) when an unknown key knocks. The set is
//! saved under `var_dir`, so a restart while the coordinator is down still lets known agents
//! in. A failed refresh keeps the set in use.
//!
//! GC: the store's adaptive compression leaves raw blobs for GC to compress, and retention
//! frees snapshots only GC reclaims; so each committed backup wakes a GC, at most one per
//! `gc_min_interval`, on a blocking thread beside the backups (the store's GC is safe while
//! writers run).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use turku_store::Store;

use crate::authorized::{read_static_file, AuthorizedKey, AuthorizedMachines};
use crate::config::StorageConfig;
use crate::constants::authorized::CACHE_FILE;
use crate::coordinator::CoordinatorLink;
use crate::registration::{registration_request, RegistrationAuth};
use crate::server::Daemon;

/// Why the authorized keys could not be refreshed (the ones in use stay).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the coordinator: {0}")]
    Coordinator(#[from] turku_api_types::client::ApiError),
    #[error("saving the authorized machines: {0}")]
    Save(String),
    #[error("the refresh task failed: {0}")]
    Task(String),
}

/// Where the last authorized set is kept between runs.
pub fn authorized_cache_path(config: &StorageConfig) -> PathBuf {
    config.var_dir.join(CACHE_FILE)
}

/// The operator's static keys (none when no file is configured); a file that cannot be
/// read is logged and counts as empty, so the coordinator's machines still get in.
fn static_keys(config: &StorageConfig) -> Vec<AuthorizedKey> {
    let Some(path) = &config.authorized_keys_static else {
        return Vec::new();
    };
    match read_static_file(path) {
        Ok((keys, warnings)) => {
            for warning in warnings {
                tracing::warn!("{}: {warning}", path.display());
            }
            keys
        }
        Err(e) => {
            tracing::warn!("static keys not used: {e}");
            Vec::new()
        }
    }
}

/// The set a daemon starts with: the one saved by its last refresh plus the static file.
pub fn load_saved(config: &StorageConfig) -> AuthorizedMachines {
    let path = authorized_cache_path(config);
    let statics = static_keys(config);
    let (machines, warnings) = match AuthorizedMachines::load(&path, &statics) {
        Ok(loaded) => loaded,
        Err(e) => {
            if path.exists() {
                tracing::warn!(
                    "{}: {e}; starting without the saved machines",
                    path.display()
                );
            }
            AuthorizedMachines::new(Default::default(), &statics)
        }
    };
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    machines
}

/// One registration with the coordinator; returns the authorized set its reply makes (with
/// the static keys), not yet in use and not yet saved.
pub fn fetch(
    config: &StorageConfig,
    link: &CoordinatorLink,
    host_key_lines: &[String],
    auth_override: Option<&RegistrationAuth>,
) -> Result<AuthorizedMachines, RefreshError> {
    let (mut request, warnings) = registration_request(config, host_key_lines, auth_override);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // Agents pin what is published: it must be the keys this daemon presents, whatever an
    // old OpenSSH-era config lists.
    if config
        .ssh_ping_host_keys
        .as_ref()
        .is_some_and(|listed| listed.as_slice() != host_key_lines)
    {
        tracing::warn!(
            "ssh_ping_host_keys lists other keys than this daemon's: publishing the daemon's own"
        );
    }
    request.storage.ssh_ping_host_keys = Some(host_key_lines.to_vec());
    let reply = link.update_config(&request)?;
    let (machines, warnings) = AuthorizedMachines::from_response(reply, &static_keys(config));
    for warning in warnings {
        tracing::warn!("authorized keys: {warning}");
    }
    Ok(machines)
}

/// [`fetch`], then saved for the daemon's next start (`update-config`).
pub fn register(
    config: &StorageConfig,
    link: &CoordinatorLink,
    host_key_lines: &[String],
    auth_override: Option<&RegistrationAuth>,
) -> Result<AuthorizedMachines, RefreshError> {
    let machines = fetch(config, link, host_key_lines, auth_override)?;
    machines
        .save(&authorized_cache_path(config))
        .map_err(|e| RefreshError::Save(e.to_string()))?;
    Ok(machines)
}

/// Registers with the coordinator and puts the machines it lists in use, then saves them
/// (a failed save is only a warning: the new keys are in use either way). One refresh runs
/// at a time, so an older reply never replaces a newer one.
pub async fn refresh(daemon: &Arc<Daemon>) -> Result<usize, RefreshError> {
    let _one_at_a_time = daemon.refreshing.lock().await;
    let config = Arc::clone(&daemon.ctx.config);
    let link = daemon.ctx.coordinator.clone();
    let host_key_lines = daemon.host_keys.public_lines();
    let machines =
        tokio::task::spawn_blocking(move || fetch(&config, &link, &host_key_lines, None))
            .await
            .map_err(|e| RefreshError::Task(e.to_string()))??;
    let count = machines.len();
    let cache = authorized_cache_path(&daemon.ctx.config);
    daemon.replace_registry(machines);
    tracing::info!(machines = count, "authorized keys refreshed");
    let registry = daemon.registry();
    let saved = tokio::task::spawn_blocking(move || registry.save(&cache)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("saving the authorized keys for the next start: {e}"),
        Err(e) => tracing::warn!("saving the authorized keys for the next start: {e}"),
    }
    Ok(count)
}

/// Starts the key refreshes (one now, then every `refresh_interval` and on each of
/// `hangups`) and the GC that follows backups.
pub fn spawn(daemon: &Arc<Daemon>, mut hangups: tokio::signal::unix::Signal) {
    let refresher = Arc::clone(daemon);
    tokio::spawn(async move {
        let every = refresher.ctx.config.daemon.refresh_interval;
        match refresh(&refresher).await {
            Ok(count) => tracing::info!("registered with the coordinator; {count} keys"),
            Err(e) => tracing::warn!(
                "cannot register with the coordinator yet ({e}); serving the {} keys saved before",
                refresher.registry().len()
            ),
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                Some(()) = hangups.recv() => tracing::info!("SIGHUP: refreshing the authorized keys"),
            }
            if let Err(e) = refresh(&refresher).await {
                tracing::warn!("refreshing the authorized keys (the last ones stay in use): {e}");
            }
        }
    });

    let collector = Arc::clone(daemon);
    tokio::spawn(async move {
        let min_interval = collector.ctx.config.daemon.gc_min_interval;
        let mut last: Option<Instant> = None;
        loop {
            collector.ctx.backups_committed.notified().await;
            if let Some(at) = last {
                let since = at.elapsed();
                if since < min_interval {
                    tokio::time::sleep(min_interval - since).await;
                }
            }
            let store = collector.ctx.config.store.clone();
            let collected = tokio::task::spawn_blocking(move || Store::open(&store)?.gc()).await;
            match collected {
                Ok(Ok(stats)) => tracing::info!(
                    freed_bytes = stats.freed_bytes,
                    deleted_packs = stats.deleted_packs,
                    compressed_blobs = stats.compressed_blobs,
                    "gc after backups"
                ),
                Ok(Err(e)) => tracing::warn!("gc after backups: {e}"),
                Err(e) => tracing::warn!("gc after backups: {e}"),
            }
            last = Some(Instant::now());
        }
    });
}
