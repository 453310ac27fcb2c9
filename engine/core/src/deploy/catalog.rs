//! What the planner knows about uploaded releases and stemcells: the facts a deploy needs
//! from the director's state, without the state itself (so planning stays pure).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::render::PropertyDecl;

/// A link a job declares (`provides` or `consumes` in its spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDecl {
    /// `name`.
    pub name: String,
    /// `type`.
    pub link_type: String,
    /// `optional` (consumers).
    pub optional: bool,
    /// `properties` exported (providers).
    pub properties: Vec<String>,
}

/// A job of an uploaded release version.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseJob {
    /// Release name.
    pub release: String,
    /// Job name.
    pub name: String,
    /// Its fingerprint (what `apply` calls its version).
    pub fingerprint: String,
    /// `templates`: source → destination.
    pub templates: Vec<(String, String)>,
    /// Declared properties.
    pub properties: Vec<PropertyDecl>,
    /// Packages the job needs.
    pub packages: Vec<String>,
    /// `provides`.
    pub provides: Vec<LinkDecl>,
    /// `consumes`.
    pub consumes: Vec<LinkDecl>,
}

/// A package of an uploaded release version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePackage {
    /// Package name.
    pub name: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Direct dependencies, by name.
    pub dependencies: Vec<String>,
}

/// An uploaded release version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReleaseFacts {
    /// Release name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Jobs by name.
    pub jobs: BTreeMap<String, ReleaseJob>,
    /// Packages by name.
    pub packages: BTreeMap<String, ReleasePackage>,
}

/// An uploaded stemcell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StemcellFacts {
    /// `name`.
    pub name: String,
    /// `operating_system`.
    pub os: String,
    /// `version`.
    pub version: String,
    /// The CPI's id for it.
    pub cid: String,
}

/// The releases (one version each, as the manifest resolved them) and stemcells (one per
/// alias) a deploy uses.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Releases by name.
    pub releases: BTreeMap<String, ReleaseFacts>,
    /// Stemcells by the manifest's alias.
    pub stemcells: BTreeMap<String, StemcellFacts>,
}

impl ReleaseFacts {
    /// BOSH's dependency key of a package: JSON of `[name, fingerprint, [its key…]]` for
    /// each direct dependency, sorted by name (so a change anywhere below changes it).
    pub fn dependency_key(&self, package: &str) -> String {
        fn nested(release: &ReleaseFacts, package: &str, depth: usize) -> Json {
            let Some(found) = release.packages.get(package) else {
                return Json::Array(Vec::new());
            };
            let mut deps: Vec<&String> = found.dependencies.iter().collect();
            deps.sort();
            Json::Array(
                deps.into_iter()
                    .filter(|_| depth < 64)
                    .map(|dep| {
                        let fingerprint = release
                            .packages
                            .get(dep)
                            .map(|p| p.fingerprint.clone())
                            .unwrap_or_default();
                        Json::Array(vec![
                            Json::String(dep.clone()),
                            Json::String(fingerprint),
                            nested(release, dep, depth + 1),
                        ])
                    })
                    .collect(),
            )
        }
        nested(self, package, 0).to_string()
    }

    /// `packages` and all they depend on, each once, dependencies first.
    pub fn closure(&self, packages: &[String]) -> Vec<String> {
        fn visit(release: &ReleaseFacts, name: &str, seen: &mut Vec<String>, depth: usize) {
            if depth > 64 || seen.iter().any(|s| s == name) {
                return;
            }
            if let Some(package) = release.packages.get(name) {
                let mut deps = package.dependencies.clone();
                deps.sort();
                for dep in &deps {
                    visit(release, dep, seen, depth + 1);
                }
            }
            seen.push(name.to_string());
        }
        let mut seen = Vec::new();
        for name in packages {
            visit(self, name, &mut seen, 0);
        }
        seen
    }
}

fn strings(value: Option<&Json>) -> Vec<String> {
    value
        .and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn links(value: Option<&Json>) -> Vec<LinkDecl> {
    value
        .and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    Some(LinkDecl {
                        name: item.get("name")?.as_str()?.to_string(),
                        link_type: item.get("type")?.as_str()?.to_string(),
                        optional: item
                            .get("optional")
                            .and_then(Json::as_bool)
                            .unwrap_or(false),
                        properties: strings(item.get("properties")),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

impl ReleaseJob {
    /// A job from its spec (`job.MF`) as the director stored it (JSON). Upload validated the
    /// spec; anything malformed that slipped through is left out rather than guessed.
    pub fn from_spec(release: &str, name: &str, fingerprint: &str, spec: &Json) -> ReleaseJob {
        let templates = spec
            .get("templates")
            .and_then(Json::as_object)
            .map(|map| {
                map.iter()
                    .filter_map(|(source, dest)| Some((source.clone(), dest.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let properties = spec
            .get("properties")
            .and_then(Json::as_object)
            .map(|map| {
                map.iter()
                    .map(|(name, decl)| PropertyDecl {
                        name: name.clone(),
                        default: decl.get("default").cloned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ReleaseJob {
            release: release.to_string(),
            name: name.to_string(),
            fingerprint: fingerprint.to_string(),
            templates,
            properties,
            packages: strings(spec.get("packages")),
            provides: links(spec.get("provides")),
            consumes: links(spec.get("consumes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_spec_becomes_a_release_job() {
        let spec = json!({
            "name": "web",
            "templates": {"bpm.yml.tera": "config/bpm.yml", "ctl.tera": "bin/ctl"},
            "packages": ["ruby", "app"],
            "properties": {"port": {"default": 8080}, "tls.cert": {"description": "PEM"}},
            "provides": [{"name": "http", "type": "http", "properties": ["port"]}],
            "consumes": [{"name": "db", "type": "database", "optional": true}]
        });
        let job = ReleaseJob::from_spec("shop", "web", "fp1", &spec);
        assert_eq!(job.templates.len(), 2);
        assert_eq!(job.packages, vec!["ruby", "app"]);
        assert_eq!(job.properties[0].default, Some(json!(8080)));
        assert_eq!(job.properties[1].default, None);
        assert_eq!(job.provides[0].properties, vec!["port"]);
        assert!(job.consumes[0].optional);
    }

    #[test]
    fn dependency_keys_follow_the_chain() {
        let package = |name: &str, fp: &str, deps: &[&str]| {
            (
                name.to_string(),
                ReleasePackage {
                    name: name.to_string(),
                    fingerprint: fp.to_string(),
                    dependencies: deps.iter().map(|d| d.to_string()).collect(),
                },
            )
        };
        let mut release = ReleaseFacts {
            name: "r".into(),
            version: "1".into(),
            jobs: BTreeMap::new(),
            packages: [
                package("app", "a1", &["lib"]),
                package("lib", "l1", &["base"]),
                package("base", "b1", &[]),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(release.dependency_key("base"), "[]");
        assert_eq!(
            release.dependency_key("app"),
            r#"[["lib","l1",[["base","b1",[]]]]]"#
        );
        assert_eq!(
            release.closure(&["app".to_string()]),
            vec!["base", "lib", "app"]
        );
        let before = release.dependency_key("app");
        release.packages.get_mut("base").unwrap().fingerprint = "b2".into();
        assert_ne!(
            release.dependency_key("app"),
            before,
            "a change two levels down changes the key"
        );
    }
}
