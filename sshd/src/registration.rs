//! The daemon's `storage_update_config` request, exactly as the original
//! `turku-storage-update-config` builds it (spec `turku.md` §2.3): who we are, where agents
//! reach us, the host keys they pin, and the space we offer for new machines.
//!
//! [`space_report`] and [`build_request`] are pure (given each volume's `stat` and `statvfs`
//! figures); [`probe_volumes`] is the adapter that asks the kernel, and
//! [`registration_request`] joins them. The probe blocks on the file systems: an async
//! caller runs it on a blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;

use turku_api_types::v1::{
    AuthCredentials, StorageConfig as WireStorage, StorageUpdateConfigRequest,
};

use crate::config::{Secret, StorageConfig, Volume};
use crate::constants::registration::BYTES_PER_MIB;

/// A file system's size, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// `f_bsize`: the original multiplies by this, not by `f_frsize` (equal on Linux).
    pub block_size: u64,
    /// `f_blocks`.
    pub blocks: u64,
    /// `f_bavail`: free to unprivileged users.
    pub blocks_available: u64,
}

/// What the kernel says about one volume's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStat {
    /// `st_dev` of the path: volumes on one file system are counted once.
    pub device: u64,
    /// `None` when `statvfs` failed: the volume's device still counts as seen, as in the
    /// original.
    pub space: Option<FsSpace>,
}

/// The space sent to the coordinator, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpaceReport {
    pub total_mib: f64,
    /// What new machines may use: the coordinator's placement weight.
    pub available_mib: f64,
}

/// Registration credentials given on the command line (`--api-auth-name`,
/// `--api-auth-secret`); they take precedence over the config's.
#[derive(Debug, Clone)]
pub struct RegistrationAuth {
    pub name: String,
    pub secret: Secret,
}

fn mib(block_size: u64, blocks: u64) -> f64 {
    // The exact product rounded once, then an exact division by a power of two: the same
    // float as Python's int / int.
    (u128::from(block_size) * u128::from(blocks)) as f64 / BYTES_PER_MIB
}

/// Sums the volumes' space in volume order, each file system once (the first volume on a
/// device decides). A volume's available space counts as 0 when it does not accept new
/// machines or is used above its high-water mark. Volumes without a stat are skipped.
pub fn space_report(
    volumes: &BTreeMap<String, Volume>,
    stats: &BTreeMap<String, VolumeStat>,
) -> SpaceReport {
    let mut seen_devices = HashSet::new();
    let mut report = SpaceReport::default();
    for (name, volume) in volumes {
        let Some(stat) = stats.get(name) else {
            continue;
        };
        if !seen_devices.insert(stat.device) {
            continue;
        }
        let Some(space) = stat.space else {
            continue;
        };
        let total = mib(space.block_size, space.blocks);
        let mut available = mib(space.block_size, space.blocks_available);
        // The original divides by the total and would crash on an empty file system; it has
        // no room for anyone.
        let full =
            total <= 0.0 || (1.0 - available / total) * 100.0 > volume.accept_new_high_water_pct;
        if !volume.accept_new || full {
            available = 0.0;
        }
        report.total_mib += total;
        report.available_mib += available;
    }
    report
}

/// The request: `ssh_ping_host_keys` are the configured ones when the config sets them,
/// else `own_host_keys` (the daemon's, which agents connect to); `auth` is the command
/// line's when both its parts are non-empty, else the config's when it has both.
pub fn build_request(
    config: &StorageConfig,
    own_host_keys: &[String],
    space: SpaceReport,
    cli_auth: Option<&RegistrationAuth>,
) -> StorageUpdateConfigRequest {
    let auth = match cli_auth {
        Some(cli) if !cli.name.is_empty() && !cli.secret.expose().is_empty() => {
            Some(AuthCredentials {
                name: cli.name.clone(),
                secret: cli.secret.expose().to_owned(),
            })
        }
        _ => match (&config.api_auth_name, &config.api_auth_secret) {
            (Some(name), Some(secret)) => Some(AuthCredentials {
                name: name.clone(),
                secret: secret.expose().to_owned(),
            }),
            _ => None,
        },
    };
    let host_keys = config
        .ssh_ping_host_keys
        .clone()
        .unwrap_or_else(|| own_host_keys.to_vec());
    StorageUpdateConfigRequest {
        auth,
        storage: WireStorage {
            name: config.name.clone(),
            secret: config.secret.expose().to_owned(),
            ssh_ping_host: Some(config.ssh_ping_host.clone()),
            ssh_ping_port: Some(config.ssh_ping_port),
            ssh_ping_user: Some(config.ssh_ping_user.clone()),
            ssh_ping_host_keys: Some(host_keys),
            space_total: Some(space.total_mib),
            space_available: Some(space.available_mib),
            published: config.published,
            comment: None,
        },
    }
}

/// Asks the kernel for each volume's `st_dev` and `statvfs`. A volume whose path cannot be
/// stat'ed is left out with a warning (the original stops the whole run there; a daemon
/// would then also stop refreshing its authorized keys), as is one whose `statvfs` fails.
pub fn probe_volumes(
    volumes: &BTreeMap<String, Volume>,
) -> (BTreeMap<String, VolumeStat>, Vec<String>) {
    let mut stats = BTreeMap::new();
    let mut warnings = Vec::new();
    for (name, volume) in volumes {
        let path = volume.path.display();
        let device = match std::fs::metadata(&volume.path) {
            Ok(meta) => meta.dev(),
            Err(err) => {
                warnings.push(format!(
                    "volume {name} ({path}): cannot stat: {err}: its space is not reported"
                ));
                continue;
            }
        };
        let space = match rustix::fs::statvfs(&volume.path) {
            Ok(fs) => Some(FsSpace {
                block_size: fs.f_bsize,
                blocks: fs.f_blocks,
                blocks_available: fs.f_bavail,
            }),
            Err(err) => {
                warnings.push(format!(
                    "volume {name} ({path}): statvfs failed: {err}: its space is not reported"
                ));
                None
            }
        };
        stats.insert(name.clone(), VolumeStat { device, space });
    }
    (stats, warnings)
}

/// The request from the config, the daemon's host keys and the volumes as they are now;
/// warnings about volumes left out for the caller to log. Blocks on `statvfs`.
pub fn registration_request(
    config: &StorageConfig,
    own_host_keys: &[String],
    cli_auth: Option<&RegistrationAuth>,
) -> (StorageUpdateConfigRequest, Vec<String>) {
    let (stats, warnings) = probe_volumes(&config.volumes);
    let space = space_report(&config.volumes, &stats);
    (
        build_request(config, own_host_keys, space, cli_auth),
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostFacts;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    fn config(extra: serde_json::Value) -> StorageConfig {
        let mut value = json!({
            "name": "storage1",
            "secret": "s3cret",
            "api_url": "https://turku.example.com/v1",
            "ssh_ping_host": "storage1.example.com",
            "ssh_ping_port": 2222,
            "ssh_ping_user": "turku-ping",
            "volumes": {"a": {"path": "/a"}},
        });
        turku_api_types::config_dir::deep_merge(&mut value, extra);
        let host = HostFacts {
            hostname: "h".to_owned(),
        };
        StorageConfig::from_value(value, &host).unwrap().config
    }

    fn gib(block_size: u64, total_gib: u64, available_gib: u64) -> FsSpace {
        let per_gib = (1 << 30) / block_size;
        FsSpace {
            block_size,
            blocks: total_gib * per_gib,
            blocks_available: available_gib * per_gib,
        }
    }

    fn stats(entries: &[(&str, u64, Option<FsSpace>)]) -> BTreeMap<String, VolumeStat> {
        entries
            .iter()
            .map(|(name, device, space)| {
                (
                    name.to_string(),
                    VolumeStat {
                        device: *device,
                        space: *space,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn each_file_system_counts_once() {
        let config = config(json!({"volumes": {
            "a": {"path": "/a"}, "b": {"path": "/a/sub"}, "c": {"path": "/c"}}}));
        let report = space_report(
            &config.volumes,
            &stats(&[
                ("a", 1, Some(gib(4096, 100, 50))),
                ("b", 1, Some(gib(4096, 100, 50))),
                ("c", 2, Some(gib(1024, 10, 9))),
            ]),
        );
        assert_eq!(report.total_mib, 110.0 * 1024.0);
        assert_eq!(report.available_mib, 59.0 * 1024.0);
    }

    #[test]
    fn the_first_volume_on_a_device_decides() {
        // b would accept new machines, but a, first in name order, is on the same device.
        let config = config(json!({"volumes": {
            "a": {"path": "/a", "accept_new": false}, "b": {"path": "/a/sub"}}}));
        let report = space_report(
            &config.volumes,
            &stats(&[
                ("a", 7, Some(gib(4096, 10, 5))),
                ("b", 7, Some(gib(4096, 10, 5))),
            ]),
        );
        assert_eq!(report.total_mib, 10.0 * 1024.0);
        assert_eq!(report.available_mib, 0.0);
    }

    #[test]
    fn above_high_water_or_closed_volumes_offer_nothing() {
        let config = config(json!({
            "accept_new_high_water_pct": 80,
            "volumes": {
                "at-mark": {"path": "/1"},
                "over-mark": {"path": "/2"},
                "own-mark": {"path": "/3", "accept_new_high_water_pct": 50},
                "closed": {"path": "/4", "accept_new": false},
                "empty-fs": {"path": "/5"},
        }}));
        let report = space_report(
            &config.volumes,
            &stats(&[
                // Exactly 80% used is not above 80: offered.
                ("at-mark", 1, Some(gib(4096, 10, 2))),
                ("over-mark", 2, Some(gib(4096, 10, 1))),
                ("own-mark", 3, Some(gib(4096, 10, 4))),
                ("closed", 4, Some(gib(4096, 10, 9))),
                ("empty-fs", 5, Some(gib(4096, 0, 0))),
            ]),
        );
        assert_eq!(report.total_mib, 40.0 * 1024.0);
        assert_eq!(report.available_mib, 2.0 * 1024.0);
    }

    #[test]
    fn missing_stats_and_failed_statvfs_are_skipped() {
        let config = config(json!({"volumes": {
            "a": {"path": "/a"}, "b": {"path": "/b"}, "c": {"path": "/c"}}}));
        // a: stat failed; b: statvfs failed, but its device counts as seen (c shares it).
        let report = space_report(
            &config.volumes,
            &stats(&[("b", 3, None), ("c", 3, Some(gib(4096, 1, 1)))]),
        );
        assert_eq!(report, SpaceReport::default());
    }

    #[test]
    fn mib_are_exact_floats() {
        // 3 blocks of 1000 bytes: Python's 3000 / 1048576.
        assert_eq!(mib(1000, 3), 3000.0 / 1_048_576.0);
        assert_eq!(mib(u64::MAX, 2), 2.0 * (u64::MAX as f64) / 1_048_576.0);
    }

    #[test]
    fn the_request_is_the_originals() {
        let config = config(json!({"published": false}));
        let space = SpaceReport {
            total_mib: 953674.31,
            available_mib: 512000.0,
        };
        let own = vec!["ssh-ed25519 AAAAown turku-storage@h".to_owned()];
        let request = build_request(&config, &own, space, None);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"storage": {
                "name": "storage1", "secret": "s3cret",
                "ssh_ping_host": "storage1.example.com", "ssh_ping_port": 2222,
                "ssh_ping_user": "turku-ping",
                "ssh_ping_host_keys": ["ssh-ed25519 AAAAown turku-storage@h"],
                "space_total": 953674.31, "space_available": 512000.0,
                "published": false}})
        );
    }

    #[test]
    fn configured_host_keys_win_over_our_own() {
        let own = vec!["ssh-ed25519 AAAAown".to_owned()];
        let configured = config(json!({"ssh_ping_host_keys": ["ssh-rsa AAAAtheirs x"]}));
        let request = build_request(&configured, &own, SpaceReport::default(), None);
        assert_eq!(
            request.storage.ssh_ping_host_keys.unwrap(),
            ["ssh-rsa AAAAtheirs x"]
        );
        // Configured as an empty list is still configured.
        let empty = config(json!({"ssh_ping_host_keys": []}));
        let request = build_request(&empty, &own, SpaceReport::default(), None);
        assert_eq!(
            request.storage.ssh_ping_host_keys.unwrap(),
            Vec::<String>::new()
        );
        let request = build_request(&config(json!({})), &own, SpaceReport::default(), None);
        assert_eq!(request.storage.ssh_ping_host_keys.unwrap(), own);
    }

    #[test]
    fn command_line_auth_wins_when_complete() {
        let with_config_auth =
            config(json!({"api_auth_name": "cfg", "api_auth_secret": "cfg-secret"}));
        let cli = RegistrationAuth {
            name: "cli".to_owned(),
            secret: Secret::new("cli-secret".to_owned()),
        };
        let auth = |config: &StorageConfig, cli: Option<&RegistrationAuth>| {
            build_request(config, &[], SpaceReport::default(), cli)
                .auth
                .map(|auth| (auth.name, auth.secret))
        };
        let pair = |name: &str, secret: &str| Some((name.to_owned(), secret.to_owned()));
        assert_eq!(
            auth(&with_config_auth, Some(&cli)),
            pair("cli", "cli-secret")
        );
        assert_eq!(auth(&with_config_auth, None), pair("cfg", "cfg-secret"));
        // An incomplete command line pair falls back to the config, as the original's
        // `if args.api_auth_name and args.api_auth_secret`.
        let half = RegistrationAuth {
            name: "cli".to_owned(),
            secret: Secret::new(String::new()),
        };
        assert_eq!(
            auth(&with_config_auth, Some(&half)),
            pair("cfg", "cfg-secret")
        );
        assert_eq!(auth(&config(json!({})), Some(&half)), None);
        assert_eq!(auth(&config(json!({"api_auth_name": "cfg"})), None), None);
        let request = build_request(&config(json!({})), &[], SpaceReport::default(), None);
        assert!(serde_json::to_value(&request)
            .unwrap()
            .get("auth")
            .is_none());
    }

    /// A tmpfs of a known size, unmounted on drop.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "mounting a tmpfs failed: these tests must run as root"
            );
            Tmpfs { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    #[test]
    fn the_kernel_figures_become_mib() {
        let fs = Tmpfs::mount("8m");
        let sub = fs.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let missing = PathBuf::from("/nonexistent/turku-volume");
        let config = config(json!({"volumes": {
            "a": {"path": fs.path()}, "b": {"path": sub}, "c": {"path": missing}}}));
        let (request, warnings) = registration_request(&config, &[], None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("volume c"), "{warnings:?}");
        // An empty 8 MiB tmpfs, counted once for a and its subdirectory b.
        assert_eq!(request.storage.space_total, Some(8.0));
        assert_eq!(request.storage.space_available, Some(8.0));

        std::fs::write(fs.path().join("fill"), vec![1u8; 7 << 20]).unwrap();
        let (request, _) = registration_request(&config, &[], None);
        assert_eq!(request.storage.space_total, Some(8.0));
        // Over 80% used: nothing offered for new machines.
        assert_eq!(request.storage.space_available, Some(0.0));
    }
}
