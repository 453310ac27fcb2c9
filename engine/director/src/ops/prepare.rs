//! Preparing a deploy on the director: the manifest as the CLI sent it, joined with the
//! cloud and runtime configs, the director's own variables, the uploaded releases and
//! stemcells and the recorded instances, turned into a plan (see [`director_core::deploy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value as Json;

use super::catalog::{self, CatalogError, LoadedCatalog, TemplateCache, TemplateError};
use crate::blobstore::Blobstore;
use director_api::ConfigKind;
use director_core::deploy::{
    ExistingInstance, ObservedInstance, PlanOptions, Prepared, ProvidedLink, Surroundings,
};
use director_core::interpolate::{Expectations, Ops, VarSources, evaluate};
use director_core::manifest::{Documents, ValidatedManifest};
use director_core::variables::VarsStore;
use director_core::yaml::{Map, Node, Span};
use director_state::{Deployment, Instance, State, StateError};

/// The name under which configs are stored (BOSH's default config name).
pub const DEFAULT_CONFIG: &str = "default";

/// A deploy, prepared: everything needed to show the plan and to run it.
#[derive(Debug)]
pub struct PreparedDeploy {
    /// The deployment name.
    pub name: String,
    /// The deployment's record, when it was deployed before.
    pub deployment: Option<Deployment>,
    /// The manifest as sent (variables of the director still as placeholders).
    pub manifest_text: String,
    /// The releases and stemcells used.
    pub catalog: LoadedCatalog,
    /// The plan and the per-instance work.
    pub prepared: Prepared,
    /// The validated manifest (director variables interpolated).
    pub validated: ValidatedManifest,
    /// The recorded instances, by uuid.
    pub instances: BTreeMap<String, Instance>,
    /// Variables generated for this deploy (stored when the deploy runs), as JSON.
    pub generated: Vec<(String, Json)>,
}

/// Why a deploy cannot be prepared. [`PrepareError::is_invalid_input`] tells the problems
/// of what was sent (the manifest, the configs, what they name) from the director's own
/// failures.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Problems of the manifest, the configs or what they name: lines for the user, all of
    /// them.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// The problems, each with its place where it has one.
        problems: Vec<String>,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
    /// The template sources of jobs could not be read: every failure, one a line.
    #[error("{}", templates_message(.first, .others))]
    Templates {
        /// The first failure.
        #[source]
        first: TemplateError,
        /// The others.
        others: Vec<TemplateError>,
    },
}

impl From<StateError> for PrepareError {
    fn from(error: StateError) -> PrepareError {
        PrepareError::State(Box::new(error))
    }
}

impl PrepareError {
    /// Whether the manifest or configs are at fault (an API answers 422), rather than the
    /// director (500).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, PrepareError::Invalid { .. })
    }

    fn invalid(message: impl Into<String>) -> PrepareError {
        PrepareError::Invalid {
            problems: vec![message.into()],
        }
    }
}

impl From<CatalogError> for PrepareError {
    fn from(error: CatalogError) -> PrepareError {
        match error {
            CatalogError::Missing { problems } => PrepareError::Invalid { problems },
            CatalogError::State(error) => PrepareError::State(error),
        }
    }
}

fn templates_message(first: &TemplateError, others: &[TemplateError]) -> String {
    std::iter::once(first)
        .chain(others)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn one(message: impl Into<String>) -> PrepareError {
    PrepareError::invalid(message)
}

/// Reads the current config of a kind, parsed.
pub async fn current_config(state: &State, kind: ConfigKind) -> Result<Option<Node>, PrepareError> {
    let Some((id, text)) = state.instances().config(kind, DEFAULT_CONFIG).await? else {
        return Ok(None);
    };
    let node = director_core::yaml::parse(&text, &format!("{kind} config (version {id})"))
        .map_err(|d| one(d.to_string()))?;
    Ok((!node.is_null()).then_some(node))
}

fn json_to_store(values: Vec<(String, Json)>) -> Map {
    let span = Span::synthetic("director variables");
    let mut map = Map::new();
    for (name, value) in values {
        map.insert(
            Node::string(name, span.clone()),
            Node::from_json(&value, &span),
        );
    }
    map
}

/// The names of the deployments a manifest consumes links from.
fn linked_deployments(validated: &ValidatedManifest) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for group in &validated.manifest.instance_groups {
        for job in &group.jobs {
            for (_, spec) in &job.consumes {
                if let Some(name) = spec
                    .as_ref()
                    .and_then(|s| s.get("deployment"))
                    .and_then(Node::as_str)
                {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

fn existing(instance: &Instance) -> ExistingInstance {
    ExistingInstance {
        uuid: instance.uuid.clone(),
        index: instance.index,
        az: instance.az.clone(),
        bootstrap: instance.bootstrap,
        ips: instance
            .ips
            .iter()
            .filter_map(|(network, address, is_static)| {
                Some((
                    network.clone(),
                    (address.parse::<IpAddr>().ok()?, *is_static),
                ))
            })
            .collect(),
    }
}

fn observed(instance: &Instance) -> ObservedInstance {
    ObservedInstance {
        uuid: instance.uuid.clone(),
        index: instance.index,
        az: instance.az.clone(),
        spec: instance
            .observed
            .as_ref()
            .and_then(|value| serde_json::from_value(value.clone()).ok()),
        has_vm: instance.vm.is_some(),
        update_completed: instance.update_completed,
        state: instance.state.clone(),
        disk_size: instance.disk.as_ref().map(|d| d.size),
    }
}

/// Prepares a deploy of `manifest_text`.
pub async fn prepare_deploy(
    state: &State,
    blobstore: &Blobstore,
    templates: &TemplateCache,
    manifest_text: &str,
    options: &PlanOptions,
) -> Result<PreparedDeploy, PrepareError> {
    let doc =
        director_core::yaml::parse(manifest_text, "manifest").map_err(|d| one(d.to_string()))?;
    let name = doc
        .get("name")
        .and_then(Node::as_str)
        .map(str::to_string)
        .ok_or_else(|| one("the manifest has no 'name' (expected the deployment's name)"))?;
    let deployment = state.deployments().find(&name).await?;
    let cloud = current_config(state, ConfigKind::Cloud).await?;
    if cloud.is_none() {
        return Err(one(
            "the director has no cloud config: set one with `director update-cloud-config FILE`",
        ));
    }
    let runtime = current_config(state, ConfigKind::Runtime).await?;

    // The director's variables: placeholders the CLI left are looked up in (or generated
    // into) the director's store of this deployment.
    let known = match &deployment {
        Some(d) => state.instances().credentials(d.id).await?,
        None => Vec::new(),
    };
    let mut store = VarsStore::in_memory(json_to_store(known));
    let expect_all = Expectations {
        all_found: true,
        all_used: false,
    };
    let sources = VarSources::new();
    let doc = evaluate(doc, &Ops::new(), &sources, Some(&mut store), expect_all)
        .map_err(|d| one(d.to_string()))?;
    let runtime = match runtime {
        Some(node) => Some(
            evaluate(node, &Ops::new(), &sources, Some(&mut store), expect_all)
                .map_err(|d| one(d.to_string()))?,
        ),
        None => None,
    };
    let cloud = match cloud {
        Some(node) => Some(
            evaluate(node, &Ops::new(), &sources, Some(&mut store), expect_all)
                .map_err(|d| one(d.to_string()))?,
        ),
        None => None,
    };
    let generated: Vec<(String, Json)> = store
        .added()
        .iter()
        .filter_map(|name| Some((name.clone(), store.get(name)?.to_json())))
        .collect();

    let validated = director_core::manifest::validate(Documents {
        manifest: Some(&doc),
        cloud_config: cloud.as_ref(),
        runtime_config: runtime.as_ref(),
    })
    .map_err(|d| PrepareError::Invalid {
        problems: d
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect(),
    })?;
    let catalog = catalog::load(
        state,
        &validated.manifest,
        validated.runtime_config.as_ref(),
    )
    .await?;

    let mut surroundings = Surroundings::default();
    let recorded = match &deployment {
        Some(d) => state.instances().list(d.id).await?,
        None => Vec::new(),
    };
    for instance in &recorded {
        surroundings
            .existing
            .entry(instance.instance_group.clone())
            .or_default()
            .push(existing(instance));
        surroundings
            .observed
            .entry(instance.instance_group.clone())
            .or_default()
            .push(observed(instance));
    }
    surroundings.taken = state
        .instances()
        .addresses_outside(deployment.as_ref().map(|d| d.id))
        .await?
        .into_iter()
        .filter_map(|(network, address)| Some((network, address.parse().ok()?)))
        .collect();
    let mut errors = Vec::new();
    for release in &catalog.releases {
        for job in &release.jobs {
            match templates.get(blobstore, &release.name, job).await {
                Ok(sources) => {
                    surroundings
                        .sources
                        .insert(job.fingerprint.clone(), (*sources).clone());
                }
                Err(e) => errors.push(e),
            }
        }
    }
    for other in linked_deployments(&validated) {
        if Some(&other) == deployment.as_ref().map(|d| &d.name) {
            continue;
        }
        let Some(found) = state.deployments().find(&other).await? else {
            continue; // reported by link resolution as "provides no shared link"
        };
        if let Some(links) = state.instances().links(found.id).await? {
            let links: Vec<ProvidedLink> = serde_json::from_value(links).unwrap_or_default();
            surroundings.external_links.insert(other, links);
        }
    }
    let mut errors = errors.into_iter();
    if let Some(first) = errors.next() {
        return Err(PrepareError::Templates {
            first,
            others: errors.collect(),
        });
    }
    let mut new_uuid = || uuid::Uuid::new_v4().to_string();
    let mut prepared = director_core::deploy::prepare(
        &validated,
        &catalog.catalog,
        &surroundings,
        options,
        &mut new_uuid,
    )
    .map_err(|problems| PrepareError::Invalid { problems })?;
    let previous_text = match &deployment {
        Some(d) => state
            .deployments()
            .manifests(d.id)
            .await?
            .into_iter()
            .next()
            .map(|m| m.text),
        None => None,
    };
    prepared.planned.plan.manifest_changed = previous_text.as_deref() != Some(manifest_text);
    prepared.planned.plan.variables_to_generate =
        generated.iter().map(|(name, _)| name.clone()).collect();
    Ok(PreparedDeploy {
        name,
        deployment,
        manifest_text: manifest_text.to_string(),
        catalog,
        prepared,
        validated,
        instances: recorded.into_iter().map(|i| (i.uuid.clone(), i)).collect(),
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_problems_are_invalid_input_and_state_failures_are_not() {
        let invalid = PrepareError::Invalid {
            problems: vec!["a".to_string(), "b".to_string()],
        };
        assert!(invalid.is_invalid_input());
        assert_eq!(invalid.to_string(), "a\nb");
        let missing = PrepareError::from(CatalogError::Missing {
            problems: vec!["release 'x' is not uploaded".to_string()],
        });
        assert!(missing.is_invalid_input());
        let state = PrepareError::from(StateError::Locked {
            name: "deployment:x".to_string(),
            by_task: director_state::TaskId(7),
        });
        assert!(!state.is_invalid_input());
    }
}
