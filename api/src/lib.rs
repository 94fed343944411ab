//! Wire types of the Turku `/v1` JSON API.
//!
//! Shared by the agent, the storage daemon and the coordinator so that all three agree on
//! key names, nesting and nulls. Plain serde types and one small blocking client (`ureq` on
//! rustls with ring): no heavy dependencies (the agent links this crate and must never pull
//! in an HTTP server or SQLite).
//!
//! - [`client`]: a blocking HTTP client for the seven endpoints (agent and storage daemon).
//! - [`constants`]: endpoint names, content types, error bodies, secret types.
//! - [`v1`]: one request/response type per endpoint.
//! - [`pyjson`]: JSON text exactly as Python's `json.dumps` writes it.
//! - [`config_dir`]: the `config.d/*.json|*.yaml` directories the original agent and storage
//!   read, deep-merged in file name order.
//!
//! ```
//! use turku_api_types::v1::{AgentPingRequest, MachineCredentials};
//! let req = AgentPingRequest {
//!     machine: MachineCredentials { uuid: "u".into(), secret: "s".into() },
//! };
//! assert_eq!(
//!     turku_api_types::pyjson::to_string(&req).unwrap(),
//!     r#"{"machine": {"uuid": "u", "secret": "s"}}"#
//! );
//! ```

pub mod client;
pub mod config_dir;
pub mod constants;
pub mod pyjson;
pub mod v1;
