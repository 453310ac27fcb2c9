//! A VM's container labels: who made it (the director, the agent) and what it is for (the
//! director's `env.bosh.metadata` and `env.bosh.group`). Pure.
//!
//! Labels are fixed when the container is made; what changes later (`set_vm_metadata`) goes
//! to a file in the container instead (see the module above).

use std::collections::HashMap;

use serde_json::Value;

/// The label naming the director that made a container, network, volume or image.
pub const DIRECTOR_LABEL: &str = "bosh.director";
/// The label naming a container's agent.
pub const AGENT_ID_LABEL: &str = "bosh.agent-id";
/// Before each key of `env.bosh.metadata` in a container's labels (`bosh.deployment`,
/// `bosh.instance_group`, `bosh.index`, `bosh.id`, `bosh.name`, `bosh.compiling`, …).
pub const METADATA_LABEL_PREFIX: &str = "bosh.";
/// The label holding `env.bosh.group`.
pub const GROUP_LABEL: &str = "bosh.group";

/// The labels of the container of agent `agent_id`, made by director `director_id` with
/// `create_vm`'s `environment`: `bosh.<key>` for each string of `env.bosh.metadata`
/// (other values skipped), [`GROUP_LABEL`] for a string `env.bosh.group`, then
/// [`DIRECTOR_LABEL`] and [`AGENT_ID_LABEL`], which nothing in the environment overrides
/// (the director's name in the metadata, `director`, is therefore not a label).
pub fn vm_labels(
    director_id: &str,
    agent_id: &str,
    environment: &Value,
) -> HashMap<String, String> {
    let bosh = &environment["bosh"];
    let mut labels: HashMap<String, String> = bosh["metadata"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            let value = value.as_str()?;
            Some((format!("{METADATA_LABEL_PREFIX}{key}"), value.to_string()))
        })
        .collect();
    if let Some(group) = bosh["group"].as_str() {
        labels.insert(GROUP_LABEL.to_string(), group.to_string());
    }
    labels.insert(DIRECTOR_LABEL.to_string(), director_id.to_string());
    labels.insert(AGENT_ID_LABEL.to_string(), agent_id.to_string());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn an_instance_is_labelled_with_its_metadata_and_group() {
        let environment = json!({"bosh": {
            "mbus": "nats://…",
            "group": "my-director-web-frontend",
            "metadata": {"deployment": "web", "instance_group": "frontend", "index": "2",
                "id": "0b5c…", "name": "frontend/0b5c…", "director": "my-director"},
        }});
        assert_eq!(
            vm_labels("director-uuid", "agent-7", &environment),
            labels(&[
                ("bosh.deployment", "web"),
                ("bosh.instance_group", "frontend"),
                ("bosh.index", "2"),
                ("bosh.id", "0b5c…"),
                ("bosh.name", "frontend/0b5c…"),
                ("bosh.group", "my-director-web-frontend"),
                ("bosh.director", "director-uuid"),
                ("bosh.agent-id", "agent-7"),
            ])
        );
    }

    #[test]
    fn a_compilation_vm_is_labelled_too() {
        let environment = json!({"bosh": {"metadata": {
            "deployment": "web", "compiling": "nginx", "director": "my-director"}}});
        assert_eq!(
            vm_labels("director-uuid", "agent-1", &environment),
            labels(&[
                ("bosh.deployment", "web"),
                ("bosh.compiling", "nginx"),
                ("bosh.director", "director-uuid"),
                ("bosh.agent-id", "agent-1"),
            ])
        );
    }

    #[test]
    fn the_cpis_own_labels_win_and_non_strings_are_skipped() {
        let environment = json!({"bosh": {
            "group": 7,
            "metadata": {"agent-id": "forged", "director": "forged", "index": 2,
                "tags": {"a": "b"}, "name": "web/1"},
        }});
        assert_eq!(
            vm_labels("director-uuid", "agent-1", &environment),
            labels(&[
                ("bosh.name", "web/1"),
                ("bosh.director", "director-uuid"),
                ("bosh.agent-id", "agent-1"),
            ])
        );
        assert_eq!(
            vm_labels("d", "a", &json!({})),
            labels(&[("bosh.director", "d"), ("bosh.agent-id", "a")])
        );
        assert_eq!(
            vm_labels("d", "a", &json!({"bosh": {"metadata": "x"}})),
            labels(&[("bosh.director", "d"), ("bosh.agent-id", "a")])
        );
    }
}
