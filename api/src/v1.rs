//! Request and response bodies of the seven `/v1` endpoints (`spec/turku.md` §1.5).
//!
//! Field order in each struct is the key order the original emits (Python dicts keep
//! insertion order). Optional request fields are skipped when `None`, because the original
//! clients only send keys they have; optional response fields serialise as `null`, because
//! the original always sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A registration secret (`Auth`) presented on first registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthCredentials {
    /// `Auth.name`.
    pub name: String,
    /// The clear registration secret.
    pub secret: String,
}

/// A machine's own credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCredentials {
    /// The agent-chosen machine UUID (hyphenated).
    pub uuid: String,
    /// The agent-chosen machine secret.
    pub secret: String,
}

/// A storage unit's own credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageCredentials {
    /// `Storage.name`.
    pub name: String,
    /// The storage secret from its configuration.
    pub secret: String,
}

/// One source as an agent describes it in `update_config` (its `sources.d` entry).
///
/// Every key is optional: absent keys keep the stored value (or take the model default for
/// a new source). Unknown keys are ignored by the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceConfig {
    /// Absolute path on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Schedule (`spec/turku.md` §1.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<String>,
    /// Retention rules (interpreted by the storage only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// rsync `--bwlimit` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<String>,
    /// `none` or `link-dest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_mode: Option<String>,
    /// Ask the storage to preserve hard links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_hard_links: Option<bool>,
    /// Unused by the original ("does nothing").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_service: Option<bool>,
    /// Storage disables snapshots for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_rotating_files: Option<bool>,
    /// Storage disables snapshots for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_modifying_files: Option<bool>,
    /// rsync filter rules (may `merge` FilterSets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Vec<String>>,
    /// rsync exclude patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// The `machine` object of `update_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Machine UUID.
    pub uuid: String,
    /// Machine secret.
    pub secret: String,
    /// Informational (Juju environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_name: Option<String>,
    /// Informational (Juju service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Unit name or host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_name: Option<String>,
    /// Free text (original agents never send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The agent's SSH public key line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// The machine's own enable switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    /// Every source of the machine, keyed by name (absent sources get unpublished).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// `POST /v1/update_config` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfigRequest {
    /// Only needed the first time (machine not yet registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthCredentials>,
    /// The machine and its sources.
    pub machine: MachineConfig,
}

/// Request of `agent_ping_checkin` and `agent_ping_restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPingRequest {
    /// The machine's credentials.
    pub machine: MachineCredentials,
}

/// Where an agent reaches a storage unit (nested in every scheduled source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageEndpoint {
    /// `Storage.name`.
    pub name: String,
    /// Host the agent SSHes to.
    pub ssh_ping_host: String,
    /// Full `.pub` lines of the storage's SSH host keys.
    pub ssh_ping_host_keys: Vec<String>,
    /// SSH port.
    pub ssh_ping_port: u16,
    /// SSH user.
    pub ssh_ping_user: String,
}

/// One source as the agent and the storage receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSource {
    /// Absolute path on the machine.
    pub path: String,
    /// Retention rules.
    pub retention: String,
    /// rsync `--bwlimit` value.
    pub bwlimit: Option<String>,
    /// FilterSet-expanded rsync filter rules.
    pub filter: Vec<String>,
    /// rsync exclude patterns.
    pub exclude: Vec<String>,
    /// Unused.
    pub shared_service: bool,
    /// Storage disables snapshots.
    pub large_rotating_files: bool,
    /// Storage disables snapshots.
    pub large_modifying_files: bool,
    /// `none`, `link-dest` or null.
    pub snapshot_mode: Option<String>,
    /// Preserve hard links.
    pub preserve_hard_links: bool,
    /// The storage holding this source's machine.
    pub storage: StorageEndpoint,
}

/// Sources keyed by name (sorted, which is also a valid Python dict order).
pub type SourceMap = BTreeMap<String, ScheduledSource>;

/// `machine` object of the `agent_ping_checkin` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSources {
    /// Sources due now.
    pub scheduled_sources: SourceMap,
}

/// `POST /v1/agent_ping_checkin` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPingCheckinResponse {
    /// Sources due now.
    pub machine: ScheduledSources,
    /// Legacy copy for agents from before 2020-09-30, which exit silently without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_sources: Option<SourceMap>,
}

/// `machine` object of the `agent_ping_restore` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSources {
    /// Every active source, due or not, published or not.
    pub sources: SourceMap,
}

/// `POST /v1/agent_ping_restore` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPingRestoreResponse {
    /// Restorable sources.
    pub machine: RestoreSources,
}

/// A machine reference in storage requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRef {
    /// Machine UUID.
    pub uuid: String,
}

/// `POST /v1/storage_ping_checkin` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePingCheckinRequest {
    /// The storage's credentials.
    pub storage: StorageCredentials,
    /// The machine that connected.
    pub machine: MachineRef,
}

/// `machine` object of the `storage_ping_checkin` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageCheckinMachine {
    /// Machine UUID (hyphenated).
    pub uuid: String,
    /// Informational.
    pub environment_name: Option<String>,
    /// Informational.
    pub service_name: Option<String>,
    /// Unit or host name.
    pub unit_name: String,
    /// Sources due now.
    pub scheduled_sources: SourceMap,
}

/// `POST /v1/storage_ping_checkin` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePingCheckinResponse {
    /// The machine and its due sources.
    pub machine: StorageCheckinMachine,
}

/// The outcome of one source's backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Whether the backup succeeded.
    #[serde(default)]
    pub success: bool,
    /// Snapshot name, e.g. `etc_20240110-123456_1a2b`.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Free text.
    #[serde(default)]
    pub summary: Option<String>,
    /// Start, seconds since the epoch.
    #[serde(default)]
    pub time_begin: Option<f64>,
    /// End, seconds since the epoch.
    #[serde(default)]
    pub time_end: Option<f64>,
}

/// `machine` object of `storage_ping_source_update`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineSourceReports {
    /// Machine UUID.
    pub uuid: String,
    /// Reports keyed by source name.
    pub sources: BTreeMap<String, SourceReport>,
}

/// `POST /v1/storage_ping_source_update` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoragePingSourceUpdateRequest {
    /// The storage's credentials.
    pub storage: StorageCredentials,
    /// The machine and its source reports.
    pub machine: MachineSourceReports,
}

/// The `storage` object of `storage_update_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// `Storage.name`.
    pub name: String,
    /// Storage secret.
    pub secret: String,
    /// Host agents SSH to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ping_host: Option<String>,
    /// SSH port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ping_port: Option<u16>,
    /// SSH user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ping_user: Option<String>,
    /// Host key `.pub` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ping_host_keys: Option<Vec<String>>,
    /// MiB (floats on the wire; truncated when stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_total: Option<f64>,
    /// MiB available for new machines (the placement weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_available: Option<f64>,
    /// The storage's own enable switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /v1/storage_update_config` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageUpdateConfigRequest {
    /// Only needed the first time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthCredentials>,
    /// The storage's configuration.
    pub storage: StorageConfig,
}

/// One machine assigned to a storage unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMachine {
    /// Informational.
    pub environment_name: Option<String>,
    /// Informational.
    pub service_name: Option<String>,
    /// Unit or host name.
    pub unit_name: String,
    /// Free text.
    pub comment: Option<String>,
    /// The agent's public key (the storage authorises it).
    pub ssh_public_key: String,
}

/// `POST /v1/storage_update_config` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUpdateConfigResponse {
    /// Active, published machines assigned to the storage, keyed by hyphenated UUID.
    pub machines: BTreeMap<String, StorageMachine>,
}

/// Object counts in the health response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCounts {
    /// Auth rows.
    pub auth: u64,
    /// Storage rows.
    pub storage: u64,
    /// Machine rows.
    pub machine: u64,
    /// Source rows.
    pub source: u64,
    /// FilterSet rows.
    pub filter_set: u64,
    /// BackupLog rows.
    pub backup_log: u64,
}

/// `POST /v1/health` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always true when the database answered.
    pub healthy: bool,
    /// Server time, ISO 8601 with offset (Python `datetime.isoformat()`).
    pub date: String,
    /// Row counts.
    pub counts: HealthCounts,
}

/// The `{}` answer of `update_config` and `storage_ping_source_update`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyResponse {}
