//! The storage unit's calls to the coordinator, with its own credentials filled in.
//!
//! Blocking (the shared `ApiClient` is); async callers run these on `spawn_blocking`.

use std::collections::BTreeMap;

use turku_api_types::client::{ApiClient, ApiError, ClientOptions};
use turku_api_types::v1::{
    MachineRef, MachineSourceReports, SourceReport, StorageCheckinMachine, StorageCredentials,
    StoragePingCheckinRequest, StoragePingSourceUpdateRequest, StorageUpdateConfigRequest,
    StorageUpdateConfigResponse,
};

use crate::config::StorageConfig;

/// A client of the coordinator that speaks as this storage unit. Cheap to clone.
#[derive(Clone)]
pub struct CoordinatorLink {
    client: ApiClient,
    name: String,
    secret: crate::config::Secret,
}

impl std::fmt::Debug for CoordinatorLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorLink")
            .field("client", &self.client)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CoordinatorLink {
    pub fn new(config: &StorageConfig) -> Result<CoordinatorLink, ApiError> {
        Ok(CoordinatorLink {
            client: ApiClient::new(&config.api_url, ClientOptions::default())?,
            name: config.name.clone(),
            secret: config.secret.clone(),
        })
    }

    fn credentials(&self) -> StorageCredentials {
        StorageCredentials {
            name: self.name.clone(),
            secret: self.secret.expose().to_owned(),
        }
    }

    /// `storage_ping_checkin`: the machine and its sources due now.
    pub fn checkin(&self, machine_uuid: &str) -> Result<StorageCheckinMachine, ApiError> {
        let request = StoragePingCheckinRequest {
            storage: self.credentials(),
            machine: MachineRef {
                uuid: machine_uuid.to_owned(),
            },
        };
        Ok(self.client.storage_ping_checkin(&request)?.machine)
    }

    /// `storage_ping_source_update` for one source.
    pub fn report(
        &self,
        machine_uuid: &str,
        source: &str,
        report: SourceReport,
    ) -> Result<(), ApiError> {
        let request = StoragePingSourceUpdateRequest {
            storage: self.credentials(),
            machine: MachineSourceReports {
                uuid: machine_uuid.to_owned(),
                sources: BTreeMap::from([(source.to_owned(), report)]),
            },
        };
        self.client.storage_ping_source_update(&request)?;
        Ok(())
    }

    /// `storage_update_config`: registers or updates this storage; the machines assigned
    /// to it come back.
    pub fn update_config(
        &self,
        request: &StorageUpdateConfigRequest,
    ) -> Result<StorageUpdateConfigResponse, ApiError> {
        self.client.storage_update_config(request)
    }
}
