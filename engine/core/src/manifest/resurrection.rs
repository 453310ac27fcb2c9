//! The resurrection config (BOSH's `type: resurrection` config): rules that turn the
//! resurrector off for some deployments and instance groups.
//!
//! ```yaml
//! rules:
//! - enabled: false
//!   include: {deployments: [dep1], instance_groups: [ig1]}
//!   exclude: {deployments: [dep2]}
//! ```
//!
//! As in BOSH: an instance no rule applies to is resurrected; any rule with `enabled: false`
//! that applies to it turns resurrection off for it. A rule applies when its `include`
//! matches (an empty or absent `include` matches everything) and its `exclude` does not (an
//! empty or absent one matches nothing). A filter matches when each list it gives
//! (`deployments`, `instance_groups`) names the instance's.

use super::decode::Cx;
use crate::yaml::{Node, YamlPath};

/// A resurrection config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResurrectionConfig {
    /// Its rules, in order.
    pub rules: Vec<ResurrectionRule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResurrectionRule {
    /// Whether matching instances are resurrected.
    pub enabled: bool,
    /// What it applies to.
    pub include: Filter,
    /// What it leaves out.
    pub exclude: Filter,
}

/// Deployments and instance groups; an empty list puts no condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub deployments: Vec<String>,
    pub instance_groups: Vec<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.deployments.is_empty() && self.instance_groups.is_empty()
    }

    fn matches(&self, deployment: &str, group: &str) -> bool {
        (self.deployments.is_empty() || self.deployments.iter().any(|d| d == deployment))
            && (self.instance_groups.is_empty() || self.instance_groups.iter().any(|g| g == group))
    }
}

impl ResurrectionRule {
    /// Whether the rule applies to an instance of `group` in `deployment`.
    pub fn applies(&self, deployment: &str, group: &str) -> bool {
        let included = self.include.is_empty() || self.include.matches(deployment, group);
        let excluded = !self.exclude.is_empty() && self.exclude.matches(deployment, group);
        included && !excluded
    }
}

impl ResurrectionConfig {
    /// Whether an instance of `group` in `deployment` is resurrected.
    pub fn enabled(&self, deployment: &str, group: &str) -> bool {
        !self
            .rules
            .iter()
            .any(|rule| !rule.enabled && rule.applies(deployment, group))
    }
}

pub(crate) fn decode_resurrection(cx: &mut Cx, doc: &Node) -> Option<ResurrectionConfig> {
    let root = YamlPath::root();
    let m = cx.map(doc, &root, "a resurrection config")?;
    m.unknown_keys(cx, &["rules"]);
    let (items, path) = m.list(cx, "rules", "rules");
    let rules = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let path = path.index(i);
            let rule = cx.map(item, &path, "a rule")?;
            rule.unknown_keys(cx, &["enabled", "include", "exclude"]);
            let enabled = match rule.get("enabled") {
                Some(_) => rule.opt_bool(cx, "enabled")?,
                None => {
                    cx.error(
                        &item.span,
                        &path,
                        "missing required key 'enabled' (true or false)",
                    );
                    return None;
                }
            };
            let filter = |cx: &mut Cx, key: &str| -> Filter {
                let Some(node) = rule.get(key) else {
                    return Filter::default();
                };
                let Some(view) = cx.map(node, &rule.at(key), &format!("'{key}'")) else {
                    return Filter::default();
                };
                view.unknown_keys(cx, &["deployments", "instance_groups"]);
                let names = |cx: &mut Cx, list: &str| -> Vec<String> {
                    view.strings(cx, list, list)
                        .into_iter()
                        .map(|name| name.value)
                        .collect()
                };
                Filter {
                    deployments: names(cx, "deployments"),
                    instance_groups: names(cx, "instance_groups"),
                }
            };
            let include = filter(cx, "include");
            let exclude = filter(cx, "exclude");
            Some(ResurrectionRule {
                enabled,
                include,
                exclude,
            })
        })
        .collect();
    Some(ResurrectionConfig { rules })
}

#[cfg(test)]
mod tests {
    use super::super::validate_resurrection_config;
    use super::*;
    use crate::yaml::parse;

    fn config(text: &str) -> ResurrectionConfig {
        let node = parse(text, "resurrection.yml").unwrap();
        validate_resurrection_config(&node).unwrap().0
    }

    #[test]
    fn no_rule_means_resurrection_and_a_disabling_rule_wins() {
        assert!(config("rules: []").enabled("cf", "router"));
        let rules = config(
            "rules:
- enabled: false
  include: {deployments: [cf], instance_groups: [router]}
- enabled: true
  include: {deployments: [cf]}
",
        );
        assert!(!rules.enabled("cf", "router"));
        assert!(rules.enabled("cf", "api"));
        assert!(rules.enabled("redis", "router"));
    }

    #[test]
    fn exclude_leaves_out_what_include_would_take() {
        let rules = config(
            "rules:
- enabled: false
  exclude: {deployments: [keep]}
",
        );
        assert!(!rules.enabled("any", "group"));
        assert!(rules.enabled("keep", "group"));
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let node = parse(
            "rules:\n- include: {deployments: cf}\n  enabld: false\n",
            "resurrection.yml",
        )
        .unwrap();
        let diagnostics = validate_resurrection_config(&node).unwrap_err().to_string();
        assert!(
            diagnostics.contains("missing required key 'enabled'"),
            "{diagnostics}"
        );
        assert!(diagnostics.contains("resurrection.yml:2"), "{diagnostics}");
    }
}
