//! Package compilation (reference §7.2): every package an instance needs, for its stemcell,
//! compiled once and cached per (package, stemcell OS/version, dependency key).
//!
//! Missing builds compile in dependency order (the package graph must be acyclic) and in
//! parallel up to `compilation.workers`, each on a compilation VM made through the CPI from
//! the cloud config's `compilation` section (kept for the next package when
//! `reuse_compilation_vms`, deleted at the end either way). The agent compiles with the
//! package's dependencies installed and `PUT`s the result to a signed URL; the director
//! records the build, so a second deploy compiles nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type DiGraphMap<N, E> = petgraph::graphmap::DiGraphMap<N, E, std::hash::RandomState>;
use serde_json::{Value as Json, json};
use tokio::task::JoinSet;

use super::Services;
use super::prepare::PreparedDeploy;
use super::stemcells::{StemcellCids, stemcell_key};
use super::vms::{CreatedVm, VmError, VmOwner, VmRequest, create_vm, delete_vm};
use crate::blobstore::slots::{Purpose, SlotError};
use crate::blobstore::{BlobId, BlobstoreError};
use crate::tasks::{Stage, TaskContext, TaskError};
use director_bus::BusError;
use director_core::manifest::ip::from_number;
use director_core::manifest::{CloudConfig, Compilation};
use director_core::stemcell::StemcellKey;
use director_state::{Archive, DeploymentId, NewCompiledPackage, Package, StateError, TaskId};

/// Why the packages of a deploy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// An instance uses a release the deploy's catalog lacks.
    #[error("release '{release}' is not in the deploy's catalog")]
    ReleaseNotInCatalog {
        /// The release.
        release: String,
    },
    /// An instance uses a package its release lacks.
    #[error("release '{release}' has no package '{package}'")]
    NoPackage {
        /// The release.
        release: String,
        /// The package.
        package: String,
    },
    /// The package graph has a cycle.
    #[error(
        "package '{package}' depends on itself through its dependencies; a cycle cannot be compiled"
    )]
    Cycle {
        /// A package on the cycle.
        package: String,
    },
    /// Packages need compiling and the cloud config cannot say where.
    #[error(
        "{count} package(s) need compiling but the cloud config has no compilation section (workers, network, vm_type)"
    )]
    NoCompilationSection {
        /// How many packages need compiling.
        count: usize,
    },
    /// The compilation section names no network.
    #[error("the cloud config's compilation section names no network")]
    NoCompilationNetwork,
    /// The compilation network is not in the cloud config.
    #[error("compilation network '{network}' is not in the cloud config")]
    UnknownNetwork {
        /// The network.
        network: String,
    },
    /// Every address of the compilation network is taken.
    #[error("no free IP on compilation network '{network}'")]
    NoFreeAddress {
        /// The network.
        network: String,
    },
    /// Other deploys kept taking the addresses found free.
    #[error("could not reserve an address on compilation network '{network}'")]
    NoAddressReserved {
        /// The network.
        network: String,
    },
    /// A compiled-only package lacks a build for the stemcell.
    #[error(
        "package '{package}' of release '{release}' comes compiled only, and not for stemcell {stemcell}; \
         upload a release with its sources, or one compiled for this stemcell"
    )]
    NoSources {
        /// The package.
        package: String,
        /// Its release.
        release: String,
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
    },
    /// The CPI has no stemcell to make a compilation VM from.
    #[error("no stemcell {stemcell} to compile '{package}' on")]
    NoStemcell {
        /// The package.
        package: String,
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
    },
    /// The agent failed compiling the package.
    #[error("compiling package '{package}/{fingerprint}' for {stemcell}: {source}")]
    Agent {
        /// The package.
        package: String,
        /// Its fingerprint.
        fingerprint: String,
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
        /// Why.
        source: Box<BusError>,
    },
    /// The agent's answer is not a compile result.
    #[error("compiling package '{package}': the agent's answer is not a compile result: {source}")]
    NotACompileResult {
        /// The package.
        package: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The agent reported a blob the blobstore does not have.
    #[error(
        "compiling package '{package}': the agent reported blob {blob_id} but the blobstore does not have it"
    )]
    BlobMissing {
        /// The package.
        package: String,
        /// The blob reported.
        blob_id: String,
    },
    /// The blob the agent reported is not what its upload URL received.
    #[error("compiling package '{package}': {source}")]
    Upload {
        /// The package.
        package: String,
        /// Why.
        source: SlotError,
    },
    /// A build recorded by another deploy could not be read back.
    #[error("a compiled build vanished while recording it")]
    BuildVanished {
        /// The package.
        package: String,
    },
    /// Packages wait on builds nothing will make.
    #[error("packages wait on dependencies that are not part of the deploy")]
    UnmetDependencies,
    /// A compilation panicked or was aborted.
    #[error("a compilation failed: {source}")]
    Join {
        /// Why.
        source: tokio::task::JoinError,
    },
    /// A blob id is not one, or the blobstore failed.
    #[error("{source}")]
    Blobstore {
        /// Why.
        source: BlobstoreError,
    },
    /// The compile request could not be turned into JSON.
    #[error("{source}")]
    Json {
        /// Why.
        source: serde_json::Error,
    },
    /// Making or deleting a compilation VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
    /// The task was cancelled.
    #[error("task cancelled")]
    Cancelled,
}

impl From<StateError> for CompileError {
    fn from(error: StateError) -> CompileError {
        CompileError::State(Box::new(error))
    }
}

impl From<CompileError> for TaskError {
    fn from(error: CompileError) -> TaskError {
        match error {
            CompileError::Cancelled => TaskError::Cancelled,
            other => TaskError::failed(other),
        }
    }
}

fn blobstore(source: BlobstoreError) -> CompileError {
    CompileError::Blobstore { source }
}

/// A compiled package an instance can install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledBuild {
    /// `<fingerprint>.<build>`.
    pub version: String,
    /// The compiled archive.
    pub blob_id: String,
}

/// Which build an instance needs: a release's package for a stemcell OS and version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BuildKey {
    /// The release.
    pub release: String,
    /// The package.
    pub package: String,
    /// The stemcell's operating system and version.
    pub stemcell: StemcellKey,
}

/// Every compiled build the deploy uses.
pub type Builds = BTreeMap<BuildKey, CompiledBuild>;

#[derive(Clone, Debug)]
struct Requirement {
    key: BuildKey,
    package: Package,
    dependency_key: String,
    /// Transitive dependencies (keys), each compiled before this one.
    dependencies: Vec<BuildKey>,
}

/// Collects what the deploy needs compiled, with the package rows.
fn requirements(prepared: &PreparedDeploy) -> Result<Vec<Requirement>, CompileError> {
    let mut wanted: BTreeMap<BuildKey, Requirement> = BTreeMap::new();
    for work in prepared.prepared.planned.work.values() {
        let stemcell = StemcellKey::new(&work.spec.stemcell.os, &work.spec.stemcell.version);
        for (name, state) in &work.spec.packages {
            let key = BuildKey {
                release: state.release.clone(),
                package: name.clone(),
                stemcell: stemcell.clone(),
            };
            if wanted.contains_key(&key) {
                continue;
            }
            let release = prepared
                .catalog
                .releases
                .iter()
                .find(|r| r.name == state.release)
                .ok_or_else(|| CompileError::ReleaseNotInCatalog {
                    release: state.release.clone(),
                })?;
            let package = release
                .packages
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| CompileError::NoPackage {
                    release: release.name.clone(),
                    package: name.clone(),
                })?
                .clone();
            let facts = &prepared.catalog.catalog.releases[&release.name];
            let closure = facts.closure(&package.dependencies);
            wanted.insert(
                key.clone(),
                Requirement {
                    key,
                    package,
                    dependency_key: state.dependency_key.clone(),
                    dependencies: closure
                        .into_iter()
                        .map(|dep| BuildKey {
                            release: state.release.clone(),
                            package: dep,
                            stemcell: stemcell.clone(),
                        })
                        .collect(),
                },
            );
        }
    }
    Ok(wanted.into_values().collect())
}

/// Finds the builds already compiled; returns them and what is left to compile, in an
/// order where dependencies come first.
async fn split(
    services: &Services,
    requirements: Vec<Requirement>,
) -> Result<(Builds, Vec<Requirement>), CompileError> {
    let mut builds = Builds::new();
    let mut missing = Vec::new();
    for requirement in requirements {
        let stemcell = &requirement.key.stemcell;
        let found = services
            .state
            .compiled_packages()
            .find(
                requirement.package.id,
                &stemcell.name,
                &stemcell.version,
                &requirement.dependency_key,
            )
            .await?;
        match found {
            Some(compiled) => {
                builds.insert(
                    requirement.key.clone(),
                    CompiledBuild {
                        version: format!("{}.{}", requirement.package.fingerprint, compiled.build),
                        blob_id: compiled.archive.blob_id,
                    },
                );
            }
            None => missing.push(requirement),
        }
    }
    // Dependency order; a cycle cannot be compiled.
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::default();
    let index: BTreeMap<&BuildKey, usize> = missing
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.key, i))
        .collect();
    for (i, requirement) in missing.iter().enumerate() {
        graph.add_node(i);
        for dep in &requirement.dependencies {
            if let Some(&d) = index.get(dep) {
                graph.add_edge(d, i, ());
            }
        }
    }
    let order = petgraph::algo::toposort(&graph, None).map_err(|cycle| CompileError::Cycle {
        package: missing[cycle.node_id()].package.name.clone(),
    })?;
    let mut slots: Vec<Option<Requirement>> = missing.into_iter().map(Some).collect();
    let ordered = order.into_iter().filter_map(|i| slots[i].take()).collect();
    Ok((builds, ordered))
}

/// A compilation VM and the address it holds.
struct Worker {
    vm: CreatedVm,
    network: String,
    address: IpAddr,
}

struct Pool {
    services: Services,
    deployment: DeploymentId,
    deployment_name: String,
    /// The deploy's task (its compilation VMs are recorded as its own).
    task: TaskId,
    compilation: Compilation,
    cloud: CloudConfig,
    idle: Mutex<Vec<Worker>>,
    all: Mutex<Vec<(String, String, String, IpAddr)>>,
}

impl Pool {
    /// A free address on the compilation network, reserved in the state.
    async fn reserve_address(&self) -> Result<(String, IpAddr, Json), CompileError> {
        let network_name = self
            .compilation
            .network
            .as_ref()
            .map(|n| n.value.clone())
            .ok_or(CompileError::NoCompilationNetwork)?;
        let network =
            self.cloud
                .network(&network_name)
                .ok_or_else(|| CompileError::UnknownNetwork {
                    network: network_name.clone(),
                })?;
        let az = self.compilation.az.as_ref().map(|a| a.value.as_str());
        for _ in 0..8 {
            let taken: BTreeSet<String> = self
                .services
                .state
                .instances()
                .all_addresses()
                .await?
                .into_iter()
                .filter(|(n, _)| *n == network_name)
                .map(|(_, a)| a)
                .collect();
            let mut candidate = None;
            'subnets: for subnet in &network.subnets {
                let serves = match az {
                    None => true,
                    Some(az) => subnet.azs.is_empty() || subnet.azs.iter().any(|a| a.value == az),
                };
                let Some(range) = subnet.range.filter(|_| serves) else {
                    continue;
                };
                let v4 = range.network.is_ipv4();
                let last = range.last().min(range.first().saturating_add(1 << 16));
                for n in range.first() + 1..last {
                    let ip = from_number(n, v4);
                    if subnet.reserved.contains(ip)
                        || subnet.static_ips.contains(ip)
                        || subnet.gateway == Some(ip)
                        || taken.contains(&ip.to_string())
                    {
                        continue;
                    }
                    candidate = Some((subnet, ip));
                    break 'subnets;
                }
            }
            let Some((subnet, ip)) = candidate else {
                return Err(CompileError::NoFreeAddress {
                    network: network_name,
                });
            };
            match self
                .services
                .state
                .instances()
                .reserve_address(self.deployment, &network_name, &ip.to_string())
                .await
            {
                Ok(()) => {
                    let settings = json!({
                        "type": "manual",
                        "ip": ip.to_string(),
                        "netmask": subnet.range.map(|r| r.netmask()).unwrap_or_default(),
                        "gateway": subnet.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        "dns": subnet.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "default": ["dns", "gateway"],
                        "cloud_properties": subnet.cloud_properties.as_ref().map(director_core::yaml::Node::to_json).filter(|j| !j.is_null()).unwrap_or_else(|| json!({})),
                    });
                    return Ok((network_name, ip, settings));
                }
                Err(StateError::AlreadyExists { .. }) => continue, // someone was faster
                Err(e) => return Err(e.into()),
            }
        }
        Err(CompileError::NoAddressReserved {
            network: network_name,
        })
    }

    async fn take(&self, package: &str, stemcell_cid: &str) -> Result<Worker, CompileError> {
        if self.compilation.reuse_compilation_vms {
            if let Some(worker) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                return Ok(worker);
            }
        }
        let (network, address, settings) = self.reserve_address().await?;
        let mut cloud_properties = json!({});
        if let Some(az) = self
            .compilation
            .az
            .as_ref()
            .and_then(|a| self.cloud.azs.iter().find(|z| z.name.value == a.value))
        {
            if let Some(props) = &az.cloud_properties {
                director_core::deploy::desired::deep_merge(&mut cloud_properties, &props.to_json());
            }
        }
        if let Some(vm_type) = self
            .compilation
            .vm_type
            .as_ref()
            .and_then(|t| self.cloud.vm_types.iter().find(|v| v.name.value == t.value))
        {
            if let Some(props) = &vm_type.cloud_properties {
                director_core::deploy::desired::deep_merge(&mut cloud_properties, &props.to_json());
            }
        }
        let request = VmRequest {
            label: format!("the compilation VM for package '{package}'"),
            stemcell_cid: stemcell_cid.to_string(),
            cloud_properties,
            networks: json!({ network.clone(): settings }),
            env: json!({}),
            disk_cids: Vec::new(),
            metadata: json!({"deployment": self.deployment_name, "compiling": package, "director": "director"}),
            owner: VmOwner::compilation(self.deployment, self.task),
        };
        match create_vm(&self.services, &request).await {
            Ok(vm) => {
                if let Ok(mut all) = self.all.lock() {
                    all.push((
                        vm.cid.clone(),
                        vm.agent_id.clone(),
                        network.clone(),
                        address,
                    ));
                }
                Ok(Worker {
                    vm,
                    network,
                    address,
                })
            }
            Err(e) => {
                let _ = self
                    .services
                    .state
                    .instances()
                    .release_address(&network, &address.to_string())
                    .await;
                Err(e.into())
            }
        }
    }

    async fn give_back(&self, worker: Worker) {
        if self.compilation.reuse_compilation_vms {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(worker);
                return;
            }
        }
        self.discard(
            &worker.vm.cid,
            &worker.vm.agent_id,
            &worker.network,
            worker.address,
        )
        .await;
    }

    async fn discard(&self, cid: &str, agent_id: &str, network: &str, address: IpAddr) {
        let _ = delete_vm(&self.services, cid, agent_id).await;
        let _ = self
            .services
            .state
            .instances()
            .release_address(network, &address.to_string())
            .await;
        if let Ok(mut all) = self.all.lock() {
            all.retain(|(c, ..)| c != cid);
        }
    }

    /// Deletes every compilation VM still there.
    async fn drain(&self) {
        let all: Vec<(String, String, String, IpAddr)> =
            self.all.lock().map(|a| a.clone()).unwrap_or_default();
        for (cid, agent_id, network, address) in all {
            self.discard(&cid, &agent_id, &network, address).await;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Compiles one package on a worker; returns the recorded build.
async fn compile_one(
    pool: &Pool,
    requirement: &Requirement,
    stemcell_cid: &str,
    dependencies: BTreeMap<String, agent_protocol::PackageSpec>,
) -> Result<CompiledBuild, CompileError> {
    let services = &pool.services;
    let package = &requirement.package;
    let release = &requirement.key.release;
    let stemcell = &requirement.key.stemcell;
    let (os, stemcell_version) = (&stemcell.name, &stemcell.version);
    let source = package
        .archive
        .as_ref()
        .ok_or_else(|| CompileError::NoSources {
            package: package.name.clone(),
            release: release.clone(),
            stemcell: stemcell.clone(),
        })?;
    let source_id = BlobId::parse(&source.blob_id).map_err(blobstore)?;
    let build = services
        .state
        .compiled_packages()
        .next_build(package.id, os, stemcell_version)
        .await?;
    let version = format!("{}.{build}", package.fingerprint);
    let upload = services
        .upload_url(Purpose::CompiledPackage, Some(pool.task))
        .await?;
    let request = agent_protocol::CompileRequest {
        name: package.name.clone(),
        version: version.clone(),
        source: services.blob_ref(&source_id),
        dependencies,
        upload_url: upload.url.clone(),
    };
    let worker = pool.take(&package.name, stemcell_cid).await?;
    let answer = services
        .bus
        .run_task(
            &worker.vm.agent_id,
            "compile_package",
            vec![serde_json::to_value(&request).map_err(|source| CompileError::Json { source })?],
            Duration::from_secs(1),
            services.timeouts.agent_task,
        )
        .await;
    match answer {
        Ok(value) => {
            pool.give_back(worker).await;
            let result: agent_protocol::CompileResult =
                serde_json::from_value(value).map_err(|source| {
                    CompileError::NotACompileResult {
                        package: package.name.clone(),
                        source,
                    }
                })?;
            let blob = services
                .blobstore
                .accept_upload(&services.state, &upload, &result.blob_id)
                .await
                .map_err(|source| CompileError::Upload {
                    package: package.name.clone(),
                    source,
                })?;
            if !services.blobstore.exists(&blob).await.map_err(blobstore)? {
                return Err(CompileError::BlobMissing {
                    package: package.name.clone(),
                    blob_id: result.blob_id,
                });
            }
            let recorded = services
                .state
                .compiled_packages()
                .insert(&NewCompiledPackage {
                    package_id: package.id,
                    stemcell_os: os.clone(),
                    stemcell_version: stemcell_version.clone(),
                    dependency_key: requirement.dependency_key.clone(),
                    build,
                    archive: Archive {
                        blob_id: result.blob_id.clone(),
                        digest: format!("sha256:{}", result.blob_id),
                    },
                })
                .await;
            // The build's record holds the blob now (or another deploy's build replaces it).
            if !matches!(&recorded, Err(e) if !matches!(e, StateError::AlreadyExists { .. })) {
                services
                    .blobstore
                    .release(&services.state, &upload.nonce)
                    .await?;
            }
            match recorded {
                Ok(compiled) => Ok(CompiledBuild {
                    version: format!("{}.{}", package.fingerprint, compiled.build),
                    blob_id: compiled.archive.blob_id,
                }),
                // Another deploy compiled it meanwhile: use theirs.
                Err(StateError::AlreadyExists { .. }) => {
                    let theirs = services
                        .state
                        .compiled_packages()
                        .find(
                            package.id,
                            os,
                            stemcell_version,
                            &requirement.dependency_key,
                        )
                        .await?
                        .ok_or_else(|| CompileError::BuildVanished {
                            package: package.name.clone(),
                        })?;
                    Ok(CompiledBuild {
                        version: format!("{}.{}", package.fingerprint, theirs.build),
                        blob_id: theirs.archive.blob_id,
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(source) => {
            pool.discard(
                &worker.vm.cid,
                &worker.vm.agent_id,
                &worker.network,
                worker.address,
            )
            .await;
            Err(CompileError::Agent {
                package: package.name.clone(),
                fingerprint: package.fingerprint.clone(),
                stemcell: stemcell.clone(),
                source: Box::new(source),
            })
        }
    }
}

/// Compiles what is missing and returns every build the deploy needs.
pub async fn compile(
    services: &Services,
    context: &TaskContext,
    prepared: &PreparedDeploy,
    deployment: DeploymentId,
    cids: &StemcellCids,
) -> Result<Builds, CompileError> {
    let (mut builds, missing) = split(services, requirements(prepared)?).await?;
    if missing.is_empty() {
        return Ok(builds);
    }
    let cloud = prepared.validated.cloud_config.clone().unwrap_or_default();
    let compilation =
        cloud
            .compilation
            .clone()
            .ok_or_else(|| CompileError::NoCompilationSection {
                count: missing.len(),
            })?;
    let workers = compilation.workers.unwrap_or(1).max(1) as usize;
    // Compilation VMs are made from a stemcell of the OS and version the builds are for.
    let stemcell_cids: BTreeMap<StemcellKey, String> = prepared
        .catalog
        .stemcells
        .values()
        .filter_map(|s| {
            let cid = cids.get(&stemcell_key(s))?;
            Some((
                StemcellKey::new(&s.operating_system, &s.version),
                cid.clone(),
            ))
        })
        .collect();
    let pool = Arc::new(Pool {
        services: services.clone(),
        deployment,
        deployment_name: prepared.name.clone(),
        task: context.id,
        compilation,
        cloud,
        idle: Mutex::new(Vec::new()),
        all: Mutex::new(Vec::new()),
    });
    let stage = context
        .log
        .stage("Compiling packages", vec![], missing.len() as u32);
    let result = run_schedule(
        &pool,
        context,
        &stage,
        missing,
        &mut builds,
        &stemcell_cids,
        workers,
    )
    .await;
    pool.drain().await;
    result.map(|()| builds)
}

async fn run_schedule(
    pool: &Arc<Pool>,
    context: &TaskContext,
    stage: &Stage,
    missing: Vec<Requirement>,
    builds: &mut Builds,
    stemcell_cids: &BTreeMap<StemcellKey, String>,
    workers: usize,
) -> Result<(), CompileError> {
    let mut waiting: Vec<(u32, Requirement)> = missing
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i as u32 + 1, r))
        .collect();
    let mut running: JoinSet<(u32, Requirement, Result<CompiledBuild, CompileError>)> =
        JoinSet::new();
    let mut first_error: Option<CompileError> = None;
    loop {
        if first_error.is_none() && context.checkpoint().is_err() {
            first_error = Some(CompileError::Cancelled);
        }
        while first_error.is_none() && running.len() < workers {
            let Some(position) = waiting
                .iter()
                .position(|(_, r)| r.dependencies.iter().all(|d| builds.contains_key(d)))
            else {
                break;
            };
            let (index, requirement) = waiting.remove(position);
            let name = &requirement.key.package;
            let step = format!("{name}/{}", requirement.package.fingerprint);
            let Some(stemcell_cid) = stemcell_cids.get(&requirement.key.stemcell).cloned() else {
                return Err(CompileError::NoStemcell {
                    package: name.clone(),
                    stemcell: requirement.key.stemcell.clone(),
                });
            };
            let dependencies = requirement
                .dependencies
                .iter()
                .filter_map(|dep| {
                    let build = builds.get(dep)?;
                    let id = BlobId::parse(&build.blob_id).ok()?;
                    Some((
                        dep.package.clone(),
                        agent_protocol::PackageSpec {
                            name: dep.package.clone(),
                            version: build.version.clone(),
                            blob: pool.services.blob_ref(&id),
                        },
                    ))
                })
                .collect();
            stage.started(&step, index);
            let pool = pool.clone();
            running.spawn(async move {
                let result = compile_one(&pool, &requirement, &stemcell_cid, dependencies).await;
                (index, requirement, result)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (index, requirement, result) =
            joined.map_err(|source| CompileError::Join { source })?;
        let step = format!(
            "{}/{}",
            requirement.package.name, requirement.package.fingerprint
        );
        match result {
            Ok(build) => {
                stage.finished(&step, index);
                builds.insert(requirement.key.clone(), build);
            }
            Err(error) => {
                stage.failed(&step, index, &error.to_string());
                first_error.get_or_insert(error);
            }
        }
        if first_error.is_none()
            && running.is_empty()
            && !waiting.is_empty()
            && !waiting
                .iter()
                .any(|(_, r)| r.dependencies.iter().all(|d| builds.contains_key(d)))
        {
            return Err(CompileError::UnmetDependencies);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
