//! The turku agent (`docs/DESIGN.md` §8): a drop-in for the original Python turku-agent.
//!
//! The pure parts live here and are unit-tested: [`config`] (the config files' settings),
//! [`session`] (rsyncd.conf, secrets, known_hosts, the rsync daemon's and ssh's argv, the
//! request, restore-mode text), [`reply`] (the coordinator's replies, read leniently),
//! [`credentials`] and [`cli`]. The binary's `adapters` run
//! the processes and touch the files.

pub mod cli;
pub mod config;
pub mod constants;
pub mod credentials;
pub mod reply;
pub mod session;
