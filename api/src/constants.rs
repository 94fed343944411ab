//! Every wire constant of the Turku `/v1` API, in one place.
//!
//! These strings are what unmodified original agents and storages send or compare against
//! (`spec/turku.md` §1.4–§1.5). Never change them: they are the protocol.

/// The path prefix every endpoint hangs off.
pub const API_PREFIX: &str = "/v1";

/// Endpoint names (the last path segment), as fixed by the original `ViewV1.view_names`.
pub mod endpoint {
    /// Monitoring probe: database connectivity and object counts.
    pub const HEALTH: &str = "health";
    /// Agent: register the machine and upload its sources.
    pub const UPDATE_CONFIG: &str = "update_config";
    /// Agent: which sources are due now.
    pub const AGENT_PING_CHECKIN: &str = "agent_ping_checkin";
    /// Agent: every restorable source.
    pub const AGENT_PING_RESTORE: &str = "agent_ping_restore";
    /// Storage: which sources of a connecting machine are due.
    pub const STORAGE_PING_CHECKIN: &str = "storage_ping_checkin";
    /// Storage: the outcome of one source's backup.
    pub const STORAGE_PING_SOURCE_UPDATE: &str = "storage_ping_source_update";
    /// Storage: register the storage unit and fetch its machines.
    pub const STORAGE_UPDATE_CONFIG: &str = "storage_update_config";

    /// All seven, in the original's order.
    pub const ALL: [&str; 7] = [
        HEALTH,
        UPDATE_CONFIG,
        AGENT_PING_CHECKIN,
        AGENT_PING_RESTORE,
        STORAGE_PING_CHECKIN,
        STORAGE_PING_SOURCE_UPDATE,
        STORAGE_UPDATE_CONFIG,
    ];
}

/// The only request content type the original accepts (string equality).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of the plain-text error bodies (Django `HttpResponse` default).
pub const CONTENT_TYPE_ERROR: &str = "text/html; charset=utf-8";
/// The only method any endpoint accepts; also the value of the `Allow` header on 405.
pub const ALLOWED_METHOD: &str = "POST";

/// Registration secret types (`Auth.secret_type`).
pub mod secret_type {
    /// Registers machines (agents).
    pub const MACHINE_REG: &str = "machine_reg";
    /// Registers storage units.
    pub const STORAGE_REG: &str = "storage_reg";
}

/// Accepted values of `Source.snapshot_mode` besides null.
pub const SNAPSHOT_MODES: [&str; 2] = ["none", "link-dest"];

/// Error bodies, byte for byte as the original sends them.
pub mod error_body {
    /// Every authentication failure (never says which part failed).
    pub const BAD_AUTH: &str = "Bad auth";
    /// Wrong or missing `Content-Type`.
    pub const BAD_CONTENT_TYPE: &str = "Bad Content-Type (expected application/json)";
    /// `update_config` without a `machine` object.
    pub const MACHINE_DICT_REQUIRED: &str = "\"machine\" dict required";
    /// `update_config` with `machine.sources` not an object.
    pub const INVALID_SOURCES_TYPE: &str = "Invalid type for \"sources\"";
    /// No active, published storage to place a new machine on.
    pub const NO_STORAGES: &str = "No storages are currently available";
    /// Storage-side lookups of a machine that is not theirs (or not active/published).
    pub const MACHINE_NOT_FOUND: &str = "Machine not found";
    /// Storage-side lookups of a source that is not active/published.
    pub const SOURCE_NOT_FOUND: &str = "Source not found";
    /// Prefix of model validation failures.
    pub const VALIDATION_ERROR_PREFIX: &str = "Validation error: ";
    /// Body of 405 responses (Django's `HttpResponseNotAllowed` has an empty body).
    pub const METHOD_NOT_ALLOWED: &str = "";
    /// Body of 404 for unknown paths.
    pub const NOT_FOUND: &str = "Not Found";
    /// Body of unexpected failures.
    pub const SERVER_ERROR: &str = "Server Error (500)";

    /// `Missing required machine option "<name>"` (update_config).
    pub fn missing_machine_option(name: &str) -> String {
        format!("Missing required machine option \"{name}\"")
    }

    /// `Missing required option "<path>"` (storage endpoints).
    pub fn missing_option(path: &str) -> String {
        format!("Missing required option \"{path}\"")
    }

    /// `Invalid type for "<path>"` (a field that must be an object or list is not).
    pub fn invalid_type(path: &str) -> String {
        format!("Invalid type for \"{path}\"")
    }
}

/// Model defaults that clients can observe.
pub mod defaults {
    /// `Source.frequency`.
    pub const FREQUENCY: &str = "daily";
    /// `Source.retention`.
    pub const RETENTION: &str = "last 5 days, earliest of month";
    /// Default Auth names created by `auth-create`.
    pub const MACHINE_AUTH_NAME: &str = "Machine Registrations";
    /// Default Auth name for storage registration secrets.
    pub const STORAGE_AUTH_NAME: &str = "Storage Registrations";
}

/// Config directories as the original agent and storage read them (`config_dir`).
pub mod config {
    /// Largest config file read: real ones are a few hundred bytes, and a bound keeps a
    /// mistaken file (a log, a core dump) from being read and parsed whole.
    pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;
    /// The subdirectory of a config dir that holds the files to merge.
    pub const CONFIG_SUBDIR: &str = "config.d";
    /// Suffix of JSON config files.
    pub const JSON_SUFFIX: &str = ".json";
    /// Suffix of YAML config files: the original globs `*.yaml` only, never `*.yml`.
    pub const YAML_SUFFIX: &str = ".yaml";
}

/// The blocking `/v1` HTTP client (`client`).
pub mod client {
    use std::time::Duration;

    /// Default bound on establishing a connection (DNS, TCP and TLS): long enough for a
    /// coordinator across the world, short enough that a dead one is noticed within a ping.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default bound on one whole call, connect to last body byte: a `storage_update_config`
    /// reply listing every machine of a large site must still arrive over a slow link.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
    /// Largest success body read. A `storage_update_config` reply for 10,000 machines with
    /// 4096-bit RSA keys and long comments is about 12 MiB; the bound keeps a broken or hostile coordinator from
    /// making the daemon buffer without limit.
    pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
    /// Most of an error body read: the coordinator's are a few words, a proxy's HTML page a
    /// few KiB; the rest is never read.
    pub const MAX_ERROR_BODY_READ: u64 = 16 << 10;
    /// Longest coordinator message kept in an error (it ends up in logs and on the agent's
    /// terminal).
    pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;
    /// Longest redirect target kept in an error.
    pub const MAX_REDIRECT_LOCATION_BYTES: usize = 256;
    /// The User-Agent: names the product and the client's version for the coordinator's logs.
    pub const USER_AGENT: &str = concat!("turku/", env!("CARGO_PKG_VERSION"));
    /// Keys under which JSON error bodies (from proxies or future coordinators) usually carry
    /// their message; our coordinator sends plain text.
    pub const ERROR_MESSAGE_KEYS: [&str; 3] = ["error", "message", "detail"];
}
