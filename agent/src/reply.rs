//! The coordinator's replies to the agent, read leniently: the agent needs only each
//! source's name and storage endpoint, and, like the original, ignores every other field
//! whatever its type (the original API stores some source settings verbatim, e.g. an
//! `exclude` given as a string, and returns them so). The api crate's strict types stay
//! what the coordinator writes.

use std::collections::BTreeMap;

use serde::Deserialize;
use turku_api_types::v1::StorageEndpoint;

/// One returned source: where it is backed up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReturnedSource {
    pub storage: StorageEndpoint,
}

/// Returned sources by name.
pub type ReturnedSources = BTreeMap<String, ReturnedSource>;

#[derive(Debug, Default, Deserialize)]
struct CheckinMachine {
    #[serde(default)]
    scheduled_sources: ReturnedSources,
}

/// The `agent_ping_checkin` reply.
#[derive(Debug, Default, Deserialize)]
pub struct CheckinReply {
    #[serde(default)]
    machine: CheckinMachine,
    /// The legacy top-level copy older coordinators send.
    #[serde(default)]
    scheduled_sources: Option<ReturnedSources>,
}

impl CheckinReply {
    /// The due sources (the legacy copy when the machine's own list is empty).
    pub fn due(self) -> ReturnedSources {
        match self.scheduled_sources {
            Some(legacy) if self.machine.scheduled_sources.is_empty() => legacy,
            _ => self.machine.scheduled_sources,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RestoreMachine {
    #[serde(default)]
    sources: ReturnedSources,
}

/// The `agent_ping_restore` reply.
#[derive(Debug, Default, Deserialize)]
pub struct RestoreReply {
    #[serde(default)]
    machine: RestoreMachine,
}

impl RestoreReply {
    pub fn sources(self) -> ReturnedSources {
        self.machine.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORAGE: &str = r#"{"name": "s1", "ssh_ping_host": "b.example.com",
        "ssh_ping_host_keys": ["ssh-ed25519 AAAA"], "ssh_ping_port": 22,
        "ssh_ping_user": "turku", "some_new_field": {"x": 1}}"#;

    #[test]
    fn odd_field_types_in_a_source_are_ignored() {
        let text = format!(
            r#"{{"machine": {{"scheduled_sources": {{"etc": {{"path": "/etc",
                "exclude": "*.tmp", "filter": null, "retention": 7, "bwlimit": 100,
                "shared_service": "no", "storage": {STORAGE}}}}}}},
              "scheduled_sources": {{"etc": {{"exclude": "*.tmp", "storage": {STORAGE}}}}}}}"#
        );
        // The api crate's strict shape refuses it: this is why the agent has its own.
        assert!(
            serde_json::from_str::<turku_api_types::v1::AgentPingCheckinResponse>(&text).is_err()
        );
        let reply: CheckinReply = serde_json::from_str(&text).unwrap();
        let due = reply.due();
        assert_eq!(due.keys().collect::<Vec<_>>(), ["etc"]);
        assert_eq!(due["etc"].storage.name, "s1");
        let text = format!(
            r#"{{"machine": {{"sources": {{"etc": {{"exclude": 3, "storage": {STORAGE}}}}}}}}}"#
        );
        let reply: RestoreReply = serde_json::from_str(&text).unwrap();
        assert_eq!(reply.sources()["etc"].storage.ssh_ping_user, "turku");
    }

    #[test]
    fn the_legacy_copy_serves_when_the_machine_list_is_empty() {
        let text = format!(
            r#"{{"machine": {{"scheduled_sources": {{}}}}, "scheduled_sources": {{"home": {{"storage": {STORAGE}}}}}}}"#
        );
        let reply: CheckinReply = serde_json::from_str(&text).unwrap();
        assert_eq!(reply.due().keys().collect::<Vec<_>>(), ["home"]);
    }
}
