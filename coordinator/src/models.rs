//! The six Turku models (`spec/turku.md` §1.2) as plain rows.
//!
//! Ids are stored as 32 lowercase hex digits (Django's UUIDField on SQLite); [`hyphenated`]
//! gives the canonical form used on the wire and as the scheduling hash id.

use chrono::{DateTime, Utc};

/// A registration secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Row id (32 hex digits).
    pub id: String,
    /// Unique human name, also the login name in registration requests.
    pub name: String,
    /// Django-encoded hash.
    pub secret_hash: String,
    /// `machine_reg` or `storage_reg`.
    pub secret_type: String,
    /// Free text.
    pub comment: Option<String>,
    /// Inactive Auths register nothing.
    pub active: bool,
    /// Creation time.
    pub date_added: DateTime<Utc>,
}

/// A storage unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Row id.
    pub id: String,
    /// Unique login name.
    pub name: String,
    /// Django-encoded hash of the storage secret.
    pub secret_hash: String,
    /// Free text.
    pub comment: Option<String>,
    /// Host agents SSH to (empty only before validation of a new row).
    pub ssh_ping_host: Option<String>,
    /// JSON list of host key lines, as `json.dumps(list, sort_keys=True)`.
    pub ssh_ping_host_keys: String,
    /// SSH port.
    pub ssh_ping_port: Option<i64>,
    /// SSH user.
    pub ssh_ping_user: Option<String>,
    /// MiB.
    pub space_total: i64,
    /// MiB; the placement weight.
    pub space_available: i64,
    /// Auth used to register.
    pub auth_id: String,
    /// Admin switch.
    pub active: bool,
    /// The storage's own switch.
    pub published: bool,
    /// Registration time.
    pub date_registered: DateTime<Utc>,
    /// Last config change.
    pub date_updated: DateTime<Utc>,
    /// Last `storage_update_config`.
    pub date_checked_in: Option<DateTime<Utc>>,
}

/// A backed-up machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Row id.
    pub id: String,
    /// Agent-chosen UUID (32 hex digits).
    pub uuid: String,
    /// Django-encoded hash of the machine secret.
    pub secret_hash: String,
    /// Informational.
    pub environment_name: Option<String>,
    /// Informational.
    pub service_name: Option<String>,
    /// Unit or host name (required; `None` only before validation of a new row).
    pub unit_name: Option<String>,
    /// Free text.
    pub comment: Option<String>,
    /// SSH public key line (required).
    pub ssh_public_key: Option<String>,
    /// Auth used to register.
    pub auth_id: String,
    /// Assigned storage (chosen once).
    pub storage_id: String,
    /// Admin switch.
    pub active: bool,
    /// The machine's own switch.
    pub published: bool,
    /// Registration time.
    pub date_registered: DateTime<Utc>,
    /// Last config change.
    pub date_updated: DateTime<Utc>,
    /// Last check-in of any kind.
    pub date_checked_in: Option<DateTime<Utc>>,
}

/// One directory tree of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Row id (its hyphenated form is the scheduling hash id).
    pub id: String,
    /// Name, unique per machine; the rsync module name.
    pub name: String,
    /// Owning machine's row id.
    pub machine_id: String,
    /// Free text.
    pub comment: Option<String>,
    /// Absolute path on the machine (required).
    pub path: Option<String>,
    /// JSON list of filter rules.
    pub filter: String,
    /// JSON list of exclude patterns.
    pub exclude: String,
    /// Schedule definition.
    pub frequency: String,
    /// Retention definition.
    pub retention: String,
    /// rsync `--bwlimit`.
    pub bwlimit: Option<String>,
    /// `none`, `link-dest` or null.
    pub snapshot_mode: Option<String>,
    /// Sent to the storage.
    pub preserve_hard_links: bool,
    /// Unused.
    pub shared_service: bool,
    /// Storage disables snapshots.
    pub large_rotating_files: bool,
    /// Storage disables snapshots.
    pub large_modifying_files: bool,
    /// Admin switch.
    pub active: bool,
    /// Last backup outcome (persisted: fix of B1).
    pub success: bool,
    /// False once the agent stops listing it.
    pub published: bool,
    /// Creation time.
    pub date_added: DateTime<Utc>,
    /// Last change.
    pub date_updated: DateTime<Utc>,
    /// Last successful backup.
    pub date_last_backed_up: Option<DateTime<Utc>>,
    /// Due time.
    pub date_next_backup: DateTime<Utc>,
}

/// One reported backup attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupLog {
    /// Row id.
    pub id: String,
    /// The source.
    pub source_id: String,
    /// When the report was processed.
    pub date: DateTime<Utc>,
    /// The reporting storage.
    pub storage_id: Option<String>,
    /// Outcome.
    pub success: bool,
    /// Start reported by the storage.
    pub date_begin: Option<DateTime<Utc>>,
    /// End reported by the storage.
    pub date_end: Option<DateTime<Utc>>,
    /// Snapshot name.
    pub snapshot: Option<String>,
    /// Free text.
    pub summary: Option<String>,
}

/// A fresh row id (random UUID, Django's 32-hex storage form).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Canonical hyphenated form of a 32-hex id (unchanged if it is not one).
pub fn hyphenated(id: &str) -> String {
    uuid::Uuid::try_parse(id).map_or_else(|_| id.to_owned(), |u| u.hyphenated().to_string())
}

impl Machine {
    /// Django's `__str__`: `"<unit_name> (<first 8 of uuid>)"`.
    pub fn label(&self) -> String {
        let uuid = hyphenated(&self.uuid);
        format!(
            "{} ({})",
            self.unit_name.as_deref().unwrap_or(""),
            uuid.get(..8).unwrap_or(&uuid)
        )
    }
}
