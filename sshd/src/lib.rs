//! `turku-storage`: the storage unit of turku, a backup system compatible with Turku.
//!
//! The storage unit keeps every machine's backups in one deduplicating snapshot store
//! (`turku-store`) and fills it by pulling from the agents with a native rsync receiver
//! (`turku-proto-rsync`): no shell-out to rsync, no OpenSSH server, no sudo.
//!
//! The daemon, `turku-storage serve` ([`server`]), is an embedded SSH server that agents
//! behind firewalls call into over `ssh -R`. The agent's key names its machine (the keys come
//! from the coordinator, [`upkeep`] keeps them current); the channel policy allows one
//! session with one `exec` and loopback `-R` forwards, which are recorded and never bound.
//! Each session ([`session`]) reads the agent's request ([`ping`]), asks the coordinator what
//! is due ([`coordinator`]) and backs up each due source through a channel opened back over
//! the agent's own connection: pull, commit, retention per the source's policy, a report to
//! the coordinator ([`backup`], the one backup path also used by the `pull` command); GC
//! follows backups. A restore-mode session stays open and is registered for a restore to
//! push through. The same session runs as an OpenSSH forced command ([`forced`]).
//!
//! Around it, a command line over the store ([`cli`]; the binary only calls it): create it,
//! ingest a local tree, pull from any stock rsync daemon, list and export snapshots, forget
//! by a Turku retention policy, verify, repair and GC; and `update-config`, one registration
//! with the coordinator ([`registration`]; with `--openssh`, [`openssh`] also writes the
//! ping user's `authorized_keys` as the original did).
//!
//! Other modules: [`config`] (turku-storage's `config.d`, typed, with our own keys),
//! [`hostkeys`] (the SSH host key, generated on first start and kept), [`authorized`] (each
//! agent key to the one machine it names, from the coordinator's reply and an operator's
//! static file, cached for restarts), [`pull`] (the store-backed rsync receiver),
//! [`throttle`] (a source's `bwlimit`), [`output`] (how snapshots and entries are shown) and
//! [`constants`] (wire constants, limits and defaults).

pub mod authorized;
pub mod backup;
pub mod cli;
pub mod config;
pub mod constants;
pub mod control;
pub mod coordinator;
pub mod forced;
/// The fuzz targets' bodies, shared with the replay of their committed seeds.
#[doc(hidden)]
pub mod fuzzing;
pub mod hostkeys;
pub mod openssh;
pub mod output;
pub mod ping;
pub mod pull;
pub mod registration;
pub mod restore;
pub mod server;
pub mod session;
pub mod throttle;
pub mod upkeep;
