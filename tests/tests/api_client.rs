//! The `/v1` client of `turku-api-types` against the real coordinator binary (`turku-api
//! serve` on an ephemeral 127.0.0.1 port): a storage and a machine register, the storage
//! sees the machine's key, a due source is reported and advances, and a wrong storage secret
//! is a typed 403 carrying the coordinator's message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use turku_api_types::client::{ApiClient, ApiError, ApiErrorKind};
use turku_api_types::constants::{defaults, error_body};
use turku_api_types::v1::{
    AuthCredentials, MachineConfig, MachineRef, MachineSourceReports, SourceConfig, SourceReport,
    StorageConfig, StorageCredentials, StoragePingCheckinRequest, StoragePingSourceUpdateRequest,
    StorageUpdateConfigRequest, UpdateConfigRequest,
};
use turku_testkit::system::Coordinator;

const UUID: &str = "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";
const STORAGE_SECRET: &str = "storage-secret-1";
const MACHINE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxUdRe0FRz8SELy3nByH8ZR7jc0rjXoUTbL0hGsrwYx turku";
fn storage_credentials(secret: &str) -> StorageCredentials {
    StorageCredentials {
        name: "primary".into(),
        secret: secret.into(),
    }
}

fn storage_config() -> StorageConfig {
    StorageConfig {
        name: "primary".into(),
        secret: STORAGE_SECRET.into(),
        ssh_ping_host: Some("127.0.0.1".into()),
        ssh_ping_port: Some(2222),
        ssh_ping_user: Some("turku-ping".into()),
        ssh_ping_host_keys: Some(vec!["ssh-ed25519 AAAAhostkey root@storage".into()]),
        space_total: Some(1000.0),
        space_available: Some(500.0),
        ..StorageConfig::default()
    }
}

fn checkin(client: &ApiClient, secret: &str) -> Result<Vec<String>, ApiError> {
    let reply = client.storage_ping_checkin(&StoragePingCheckinRequest {
        storage: storage_credentials(secret),
        machine: MachineRef { uuid: UUID.into() },
    })?;
    assert_eq!(reply.machine.uuid, UUID);
    assert_eq!(reply.machine.unit_name, "web-0");
    for source in reply.machine.scheduled_sources.values() {
        assert_eq!(source.storage.name, "primary");
        assert_eq!(source.storage.ssh_ping_port, 2222);
    }
    Ok(reply.machine.scheduled_sources.keys().cloned().collect())
}

#[test]
fn storage_and_machine_lifecycle_against_the_real_coordinator() {
    let coordinator = Coordinator::start();
    let storage_reg = coordinator
        .manage(&["auth-create", "storage_reg", "--raw"])
        .trim()
        .to_owned();
    let machine_reg = coordinator
        .manage(&["auth-create", "machine_reg", "--raw"])
        .trim()
        .to_owned();
    let client = coordinator.client();

    // The storage registers with its registration secret; no machines yet.
    let reply = client
        .storage_update_config(&StorageUpdateConfigRequest {
            auth: Some(AuthCredentials {
                name: defaults::STORAGE_AUTH_NAME.into(),
                secret: storage_reg,
            }),
            storage: storage_config(),
        })
        .expect("storage registration");
    assert!(reply.machines.is_empty(), "{reply:?}");

    // The machine registers with one source and lands on the only storage.
    let sources = BTreeMap::from([(
        "etc".to_owned(),
        SourceConfig {
            path: Some("/etc".into()),
            frequency: Some("daily".into()),
            exclude: Some(vec!["*.tmp".into()]),
            ..SourceConfig::default()
        },
    )]);
    client
        .update_config(&UpdateConfigRequest {
            auth: Some(AuthCredentials {
                name: defaults::MACHINE_AUTH_NAME.into(),
                secret: machine_reg,
            }),
            machine: MachineConfig {
                uuid: UUID.into(),
                secret: "machine-secret-1".into(),
                unit_name: Some("web-0".into()),
                ssh_public_key: Some(MACHINE_KEY.into()),
                sources,
                ..MachineConfig::default()
            },
        })
        .expect("machine registration");

    // The storage now sees the machine and the key it must authorise.
    let reply = client
        .storage_update_config(&StorageUpdateConfigRequest {
            auth: None,
            storage: storage_config(),
        })
        .expect("storage refresh");
    let machine = reply.machines.get(UUID).expect("the machine is listed");
    assert_eq!(machine.ssh_public_key, MACHINE_KEY);
    assert_eq!(machine.unit_name, "web-0");

    // A new source waits for its first slot; make it due now.
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        Vec::<String>::new()
    );
    coordinator.manage(&["backup-now", UUID, "etc"]);
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        ["etc"],
        "the source is scheduled"
    );

    // A successful report moves it to its next slot: no longer due.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    client
        .storage_ping_source_update(&StoragePingSourceUpdateRequest {
            storage: storage_credentials(STORAGE_SECRET),
            machine: MachineSourceReports {
                uuid: UUID.into(),
                sources: BTreeMap::from([(
                    "etc".to_owned(),
                    SourceReport {
                        success: true,
                        snapshot: Some("etc_20240110-123456_1a2b".into()),
                        summary: Some("Base snapshot: none\n".into()),
                        time_begin: Some(now - 5.0),
                        time_end: Some(now),
                    },
                )]),
            },
        })
        .expect("source update");
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        Vec::<String>::new(),
        "a reported source is no longer due"
    );

    // A wrong storage secret: a typed refusal with the coordinator's own words, and no
    // trace of the secret that was sent.
    let e = checkin(&client, "wrong-secret-xyz").expect_err("a wrong secret must be refused");
    match &e {
        ApiError::Status {
            status,
            message,
            endpoint,
            ..
        } => {
            assert_eq!(*status, 403);
            assert_eq!(message, error_body::BAD_AUTH);
            assert_eq!(endpoint, "storage_ping_checkin");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.kind(), ApiErrorKind::Refused);
    assert!(e.is_refused() && !e.is_unavailable());
    assert!(!format!("{e} {e:?}").contains("wrong-secret-xyz"));
}
