//! `turku-storage`: the storage unit of turku, a backup system compatible with Turku.
//!
//! The storage unit keeps every machine's backups in one deduplicating snapshot store
//! (`turku-store`) and fills it by pulling from the agents with a native rsync receiver
//! (`turku-proto-rsync`): no shell-out to rsync, no OpenSSH server, no sudo.
//!
//! Today it is a command line over the store: create it, ingest a local tree, pull a tree
//! from a stock rsync daemon ([`pull`], through the one backup path in [`backup`]), list
//! and export snapshots, forget them by a Turku retention policy, verify, repair and GC.
//!
//! Next it becomes the storage daemon: `serve`, an embedded SSH server that agents behind
//! firewalls call into over `ssh -R`, with public-key auth per machine and a strict channel
//! policy; the agent ping sessions (`ping`, also as an OpenSSH forced command), whose
//! check-ins start backups through the tunnel — pull, commit, retention per the source's
//! policy, a report to the coordinator — with GC between them; and restores pushed back
//! through the same session.
//!
//! Modules: [`cli`] (the command line; the binary only calls it), [`backup`] (the backup
//! job every entry point shares), [`config`] (turku-storage's `config.d`, typed), [`pull`] (the store-backed rsync receiver), [`output`]
//! (how snapshots and entries are shown), [`ping`] (the agent's ping request, sans-io) and
//! [`constants`] (wire constants and limits).
//! [`hostkeys`] keeps the daemon's SSH host keys, generated on first start and never changed.
//! [`authorized`] maps each agent key to the one machine it names, from the coordinator's
//! reply and an operator's static file, cached for restarts.
//! [`registration`] builds the `storage_update_config` request: our host keys and free space.

pub mod authorized;
pub mod backup;
pub mod cli;
pub mod config;
pub mod constants;
pub mod coordinator;
pub mod forced;
pub mod hostkeys;
pub mod output;
pub mod ping;
pub mod pull;
pub mod registration;
pub mod server;
pub mod session;
pub mod throttle;
pub mod upkeep;
