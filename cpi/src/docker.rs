//! `DockerCpi`: a VM is a container of the local Docker engine (feature `docker`).
//!
//! - Stemcells: `create_stemcell` imports a `docker-rootfs` stemcell's image (a gzipped root
//!   file system tarball) with the engine's image import (`POST /images/create?fromSrc=-`, no
//!   registry), tagged `<name>:<version>` from the stemcell's `cloud_properties`; the CID is
//!   the image id (`sha256:…`); the image is labelled with the director
//!   ([`DIRECTOR_LABEL`]). `delete_stemcell` removes the image; a missing one succeeds,
//!   as in [`crate::local`].
//! - VMs: a container named `<prefix>vm-<uuid>` (the CID) from the stemcell's image, whose
//!   main process is the agent (`/var/vcap/bosh/bin/bosh-agent --settings
//!   /var/vcap/bosh/settings.json`) under Docker's init (`--init`, which reaps zombies). Its
//!   hostname is the CID (the director does not pass the instance id to `create_vm`). The
//!   agent's settings (mode 0600) are copied into the created container before it starts.
//!   Labels name the director ([`DIRECTOR_LABEL`]) and the agent ([`AGENT_ID_LABEL`]).
//! - Networks: every manual network of `create_vm` is a user-defined bridge network named
//!   `<prefix>net-<a.b.c.d>-<prefix length>` after its subnet (from the IP and netmask the
//!   director gives), with the director's gateway, made on first use and labelled with the
//!   director; the container gets the IP the director allocated. `delete_vm` removes the
//!   VM's networks that no other container uses. Dynamic and VIP networks are refused
//!   (`NotSupported`) in this version.
//! - Metadata: labels cannot change on a container, so `set_vm_metadata` keeps the metadata
//!   in a file in the container, `/var/vcap/bosh/vm-metadata.json` (copied in with the
//!   engine's archive API, which works on stopped containers too); it goes with the
//!   container.
//! - Persistent disks: a disk is a named volume `<prefix>disk-<uuid>` (the CID), labelled
//!   with the director and its size in MB ([`DISK_SIZE_LABEL`]; recorded, not enforced:
//!   the local driver has no sizes). Docker cannot mount a volume into a running container,
//!   so `attach_disk` and `detach_disk` re-create the VM's container under the same name
//!   (the CID) with the same image, hostname, labels, networks and IPs, host settings and
//!   `/var/vcap/bosh` (the agent's settings and state, the VM's metadata), and the volume
//!   mounted at `/var/vcap/disks/<disk cid>` ([`DISKS_IN_VM`]) or not. The answer of
//!   `attach_disk`, also put in the settings' `disks.persistent` as the local CPI does, is
//!   `{"path": "/var/vcap/disks/<disk cid>"}`: the agent's `mount_disk` makes
//!   `/var/vcap/store` show that directory (a volume mounted at the store itself would leave
//!   the agent nothing to mount, and `migrate_disk` needs both disks at once). The rest of
//!   the container's writable layer (`/var/vcap/data`: packages, jobs) is not carried over
//!   (an ephemeral-disk volume would be the way to keep it). The old container is stopped
//!   and renamed `<cid>-replaced` while the new one is made, and comes back when that
//!   fails; it is removed once the new one runs. `get_disks` lists the volumes mounted
//!   below [`DISKS_IN_VM`]; `delete_disk` refuses a disk a container still mounts.
//!   `set_disk_metadata` checks that the disk exists and keeps nothing: a volume's labels
//!   cannot change, and a file on the volume would show in the job's data.
//!
//! Calls are blocking: each runs on the CPI's own small tokio runtime, so a `DockerCpi` must
//! not be made or called from inside an async task (the director calls CPIs on blocking
//! threads); it may be dropped anywhere.
//!
//! A `create_vm` racing a `delete_vm` that removes the network it is about to join fails
//! with `VMCreationFailed` and `ok_to_retry` (the retry makes the network again).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, Ipam, IpamConfig, Mount, MountType, NetworkConnectRequest, NetworkCreateRequest,
    NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    InspectNetworkOptions, ListContainersOptions, RemoveContainerOptions, RemoveImageOptions,
    RemoveVolumeOptions, RenameContainerOptions, RestartContainerOptions, StopContainerOptions,
    UploadToContainerOptions,
};
use bollard::{body_full, body_try_stream};
use futures::StreamExt as _;
use serde_json::Value;

use crate::{Cpi, CpiError, ErrorKind, Info, Result};

/// The label naming the director that made a container or network.
pub const DIRECTOR_LABEL: &str = "bosh.director";
/// The label naming a container's agent.
pub const AGENT_ID_LABEL: &str = "bosh.agent-id";
/// The agent in a stemcell's image.
pub const AGENT_IN_VM: &str = "/var/vcap/bosh/bin/bosh-agent";
/// Where `create_vm` puts the agent's settings.
pub const SETTINGS_IN_VM: &str = "/var/vcap/bosh/settings.json";
/// The label of a disk's volume holding its size in MB.
pub const DISK_SIZE_LABEL: &str = "bosh.disk-size-mb";
/// Where attached disks' volumes are mounted in a VM, each at `<DISKS_IN_VM>/<disk cid>`.
pub const DISKS_IN_VM: &str = "/var/vcap/disks";
/// The agent's directory in a VM, carried over when a VM's container is re-created.
const AGENT_DIR_IN_VM: &str = "/var/vcap/bosh";
/// Where `set_vm_metadata` keeps a VM's metadata.
pub const METADATA_IN_VM: &str = "/var/vcap/bosh/vm-metadata.json";
/// Seconds the engine gives the agent to stop on `reboot_vm` and `delete_vm`.
const STOP_TIMEOUT_SECONDS: i32 = 10;
/// How often a network whose address pool is still taken (a removal under way) is tried.
const NETWORK_TRIES: u32 = 40;
/// Seconds a request to the engine may take (an image import included).
const REQUEST_TIMEOUT_SECONDS: u64 = 600;

/// Where the engine is and how this CPI names what it makes.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The engine's Unix socket (`/var/run/docker.sock`).
    pub socket: PathBuf,
    /// The director's id, put on every container and network as [`DIRECTOR_LABEL`].
    pub director_id: String,
    /// Put before the names of containers and networks (e.g. `bosh-`), so several directors
    /// (or test runs) share one engine.
    pub name_prefix: String,
}

impl DockerConfig {
    /// The local engine's default socket, `director_id` and the `bosh-` prefix.
    pub fn local(director_id: impl Into<String>) -> DockerConfig {
        DockerConfig {
            socket: PathBuf::from("/var/run/docker.sock"),
            director_id: director_id.into(),
            name_prefix: "bosh-".to_string(),
        }
    }
}

/// The Docker CPI (see the module's documentation).
pub struct DockerCpi {
    docker: Docker,
    /// Always `Some` until dropped (taken to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
    config: DockerConfig,
}

impl Drop for DockerCpi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for DockerCpi {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DockerCpi")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DockerCpi {
    /// Connects to the engine and agrees on an API version; fails, naming the socket, when
    /// the engine does not answer.
    pub fn new(config: DockerConfig) -> Result<DockerCpi> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("docker-cpi")
            .enable_all()
            .build()
            .map_err(|error| {
                cloud_error(format!("cannot start the Docker CPI's runtime: {error}"))
            })?;
        let socket = config.socket.display().to_string();
        let docker = runtime.block_on(async {
            let docker = Docker::connect_with_unix(
                &socket,
                REQUEST_TIMEOUT_SECONDS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|error| {
                cloud_error(format!(
                    "cannot connect to the Docker engine at {socket}: {error}"
                ))
            })?;
            docker.negotiate_version().await.map_err(|error| {
                cloud_error(format!(
                    "the Docker engine at {socket} does not answer: {error}"
                ))
            })
        })?;
        Ok(DockerCpi {
            docker,
            runtime: Some(runtime),
            config,
        })
    }

    /// The configuration this CPI was made with.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// TEMPORARY (replaced by the CPI branch's version): the default bridge's gateway.
    pub fn agent_address(&self) -> Result<Ipv4Addr> {
        self.block_on(async {
            let network = self
                .docker
                .inspect_network("bridge", None::<InspectNetworkOptions>)
                .await
                .map_err(|error| cloud_error(format!("cannot inspect network bridge: {error}")))?;
            network
                .ipam
                .and_then(|ipam| ipam.config)
                .unwrap_or_default()
                .into_iter()
                .find_map(|config| {
                    config.gateway.and_then(|g| g.parse().ok()).or_else(|| {
                        let subnet = config.subnet?;
                        let (base, _) = subnet.split_once('/')?;
                        let base: Ipv4Addr = base.parse().ok()?;
                        Some(Ipv4Addr::from(u32::from(base) + 1))
                    })
                })
                .ok_or_else(|| cloud_error("Docker's bridge network has no gateway"))
        })
    }

    /// Runs `future` to its end on the CPI's runtime (there until the CPI is dropped).
    fn block_on<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err(cloud_error("the Docker CPI is shut down")),
        }
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(DIRECTOR_LABEL.to_string(), self.config.director_id.clone())])
    }

    /// Copies `contents` into the container as the file `path` (absolute) with `mode`.
    async fn put_file(&self, vm_cid: &str, path: &str, contents: &[u8], mode: u32) -> Result<()> {
        let archive =
            single_file_tar(path.trim_start_matches('/'), contents, mode).map_err(|error| {
                cloud_error(format!("cannot archive {path} for VM {vm_cid}: {error}"))
            })?;
        let options = UploadToContainerOptions {
            path: "/".to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(vm_cid, Some(options), body_full(archive.into()))
            .await
            .map_err(|error| match not_found(&error) {
                true => vm_not_found(vm_cid),
                false => cloud_error(format!("cannot write {path} into VM {vm_cid}: {error}")),
            })
    }

    /// The bridge network for a manual network, made when missing; answers its name.
    async fn ensure_network(&self, name: &str, spec: &ManualNetwork) -> Result<String> {
        let docker_name = format!(
            "{}net-{}-{}",
            self.config.name_prefix, spec.subnet, spec.prefix_length
        );
        // A parallel create_vm may be making it, or a parallel delete_vm removing it (its
        // address pool is taken until the removal ends): look again for a few seconds.
        let mut tries = 0;
        loop {
            tries += 1;
            let inspect = self
                .docker
                .inspect_network(&docker_name, None::<InspectNetworkOptions>)
                .await;
            match inspect {
                Ok(_) => return Ok(docker_name),
                Err(error) if not_found(&error) => {}
                Err(error) => {
                    return Err(cloud_error(format!(
                        "cannot inspect Docker network {docker_name} (network '{name}'): {error}"
                    )));
                }
            }
            let request = NetworkCreateRequest {
                name: docker_name.clone(),
                driver: Some("bridge".to_string()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("{}/{}", spec.subnet, spec.prefix_length)),
                        gateway: spec.gateway.map(|gateway| gateway.to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(self.labels()),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => return Ok(docker_name),
                Err(error) if conflict(&error) => return Ok(docker_name),
                Err(error) if status(&error) == Some(403) && tries < NETWORK_TRIES => {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(error) => {
                    return Err(creation_failed(format!(
                        "cannot create Docker network {docker_name} for network '{name}' ({}/{}): {error}",
                        spec.subnet, spec.prefix_length
                    )));
                }
            }
        }
    }

    async fn create_vm_async(
        &self,
        agent_id: &str,
        stemcell_cid: &str,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        let vm_cid = format!("{}vm-{}", self.config.name_prefix, uuid::Uuid::new_v4());
        let mut settings = crate::local::agent_settings(agent_id, &vm_cid, networks, environment)
            .map_err(|message| CpiError::new(ErrorKind::CpiError, message))?;
        let mut mounts = Vec::new();
        for disk_cid in disk_cids {
            self.check_disk_free(disk_cid, &vm_cid).await?;
            settings
                .disks
                .persistent
                .insert(disk_cid.clone(), disk_hint(disk_cid));
            mounts.push(disk_mount(disk_cid));
        }
        let settings = serde_json::to_vec_pretty(&settings)
            .map_err(|error| cloud_error(format!("cannot encode the agent's settings: {error}")))?;
        match self.docker.inspect_image(stemcell_cid).await {
            Ok(_) => {}
            Err(error) if not_found(&error) => {
                return Err(cloud_error(format!("stemcell {stemcell_cid} not found")));
            }
            Err(error) => {
                return Err(cloud_error(format!(
                    "cannot inspect stemcell {stemcell_cid}: {error}"
                )));
            }
        }
        let mut endpoints = Vec::new();
        if let Value::Object(networks) = networks {
            for (name, spec) in networks {
                let spec = ManualNetwork::parse(name, spec)?;
                let docker_name = self.ensure_network(name, &spec).await?;
                endpoints.push((docker_name, spec.ip));
            }
        }
        let endpoint = |ip: Ipv4Addr| EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut labels = self.labels();
        labels.insert(AGENT_ID_LABEL.to_string(), agent_id.to_string());
        let first = endpoints.first().cloned();
        let body = ContainerCreateBody {
            image: Some(stemcell_cid.to_string()),
            hostname: Some(vm_cid.clone()),
            labels: Some(labels),
            entrypoint: Some(vec![AGENT_IN_VM.to_string()]),
            cmd: Some(vec!["--settings".to_string(), SETTINGS_IN_VM.to_string()]),
            host_config: Some(HostConfig {
                init: Some(true),
                mounts: (!mounts.is_empty()).then_some(mounts),
                network_mode: Some(
                    first
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |(name, _)| name.clone()),
                ),
                ..Default::default()
            }),
            networking_config: first.map(|(name, ip)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(name, endpoint(ip))])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(vm_cid.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|error| creation_failed(format!("cannot create VM {vm_cid}: {error}")))?;
        let started = async {
            for (name, ip) in endpoints.iter().skip(1) {
                let request = NetworkConnectRequest {
                    container: vm_cid.clone(),
                    endpoint_config: Some(endpoint(*ip)),
                };
                self.docker
                    .connect_network(name, request)
                    .await
                    .map_err(|error| {
                        creation_failed(format!(
                            "cannot connect VM {vm_cid} to Docker network {name} with {ip}: {error}"
                        ))
                    })?;
            }
            self.put_file(&vm_cid, SETTINGS_IN_VM, &settings, 0o600)
                .await?;
            self.docker
                .start_container(&vm_cid, None)
                .await
                .map_err(|error| creation_failed(format!("cannot start VM {vm_cid}: {error}")))
        }
        .await;
        if let Err(error) = started {
            let _ = self.remove_container(&vm_cid).await;
            self.remove_unused_networks(endpoints.iter().map(|(name, _)| name.as_str()))
                .await;
            return Err(error);
        }
        Ok((vm_cid, networks.clone()))
    }

    /// Removes a container (stopping it); answers whether there was one.
    async fn remove_container(&self, vm_cid: &str) -> Result<bool> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(vm_cid, Some(options)).await {
            Ok(()) => Ok(true),
            Err(error) if not_found(&error) => Ok(false),
            Err(error) => Err(cloud_error(format!("cannot delete VM {vm_cid}: {error}"))),
        }
    }

    /// A VM's container, or `VMNotFound`.
    async fn inspect_vm(&self, vm_cid: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(vm_cid, None)
            .await
            .map_err(|error| match not_found(&error) {
                true => vm_not_found(vm_cid),
                false => cloud_error(format!("cannot inspect VM {vm_cid}: {error}")),
            })
    }

    /// Whether the volume `disk_cid` exists and is this director's.
    async fn disk_exists(&self, disk_cid: &str) -> Result<bool> {
        match self.docker.inspect_volume(disk_cid).await {
            Ok(volume) => Ok(volume.labels.get(DIRECTOR_LABEL) == Some(&self.config.director_id)),
            Err(error) if not_found(&error) => Ok(false),
            Err(error) => Err(cloud_error(format!(
                "cannot inspect disk {disk_cid}: {error}"
            ))),
        }
    }

    /// Fails unless the disk exists and no container but `vm_cid`'s mounts it.
    async fn check_disk_free(&self, disk_cid: &str, vm_cid: &str) -> Result<()> {
        if !self.disk_exists(disk_cid).await? {
            return Err(disk_not_found(disk_cid));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "volume".to_string(),
                vec![disk_cid.to_string()],
            )])),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| {
                cloud_error(format!(
                    "cannot list the containers of disk {disk_cid}: {error}"
                ))
            })?;
        let other = containers
            .into_iter()
            .filter_map(|container| container.names)
            .flatten()
            .map(|name| name.trim_start_matches('/').to_string())
            .find(|name| *name != vm_cid);
        match other {
            Some(other) => Err(cloud_error(format!(
                "disk {disk_cid} is attached to VM {other}; detach it first"
            ))),
            None => Ok(()),
        }
    }

    /// A file or directory of a container as a tar archive.
    async fn download(&self, vm_cid: &str, path: &str) -> Result<Vec<u8>> {
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(vm_cid, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| match not_found(&error) {
                true => cloud_error(format!("VM {vm_cid} has no {path}")),
                false => cloud_error(format!("cannot read {path} of VM {vm_cid}: {error}")),
            })?;
            archive.extend_from_slice(&chunk);
        }
        Ok(archive)
    }

    /// Re-creates the VM's container (`old`) with `mounts` and the agent's settings changed
    /// by `edit` (their `disks.persistent`): same name, image, hostname, labels, networks
    /// and IPs, host settings and [`AGENT_DIR_IN_VM`]; running when the old one ran. The
    /// old container is stopped and renamed meanwhile, and comes back when anything fails.
    async fn recreate_vm(
        &self,
        vm_cid: &str,
        old: &ContainerInspectResponse,
        mounts: Vec<Mount>,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<()> {
        let agent_dir = self.download(vm_cid, AGENT_DIR_IN_VM).await?;
        let mut settings = settings_in_archive(&agent_dir)
            .map_err(|error| {
                cloud_error(format!(
                    "cannot read {SETTINGS_IN_VM} of VM {vm_cid}: {error}"
                ))
            })?
            .ok_or_else(|| cloud_error(format!("VM {vm_cid} has no {SETTINGS_IN_VM}")))?;
        edit(persistent_disks(&mut settings).ok_or_else(|| {
            cloud_error(format!(
                "{SETTINGS_IN_VM} of VM {vm_cid}: disks.persistent is not a map"
            ))
        })?);
        let settings = serde_json::to_vec_pretty(&settings)
            .map_err(|error| cloud_error(format!("cannot encode the agent's settings: {error}")))?;
        let running = old
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        if running {
            let options = StopContainerOptions {
                t: Some(STOP_TIMEOUT_SECONDS),
                ..Default::default()
            };
            match self.docker.stop_container(vm_cid, Some(options)).await {
                Ok(()) => {}
                // Stopped meanwhile.
                Err(error) if status(&error) == Some(304) => {}
                Err(error) => {
                    return Err(cloud_error(format!("cannot stop VM {vm_cid}: {error}")));
                }
            }
        }
        let replaced = format!("{vm_cid}-replaced");
        let restore = |error: CpiError| async move {
            if running {
                let _ = self.docker.start_container(vm_cid, None).await;
            }
            error
        };
        let rename = RenameContainerOptions {
            name: replaced.clone(),
        };
        if let Err(error) = self.docker.rename_container(vm_cid, rename).await {
            return Err(restore(cloud_error(format!(
                "cannot rename VM {vm_cid} to {replaced} to re-create it: {error}"
            )))
            .await);
        }
        let made = self
            .create_replacement(vm_cid, old, mounts, agent_dir, &settings, running)
            .await;
        if let Err(error) = made {
            let _ = self.remove_container(vm_cid).await;
            let back = RenameContainerOptions {
                name: vm_cid.to_string(),
            };
            let _ = self.docker.rename_container(&replaced, back).await;
            return Err(restore(error).await);
        }
        self.remove_container(&replaced).await.map_err(|error| {
            cloud_error(format!(
                "VM {vm_cid} was re-created, but its old container {replaced} remains: {error}"
            ))
        })?;
        Ok(())
    }

    /// Makes (and starts when `start`) the container `vm_cid` re-creating `old`.
    async fn create_replacement(
        &self,
        vm_cid: &str,
        old: &ContainerInspectResponse,
        mounts: Vec<Mount>,
        agent_dir: Vec<u8>,
        settings: &[u8],
        start: bool,
    ) -> Result<()> {
        let config = old.config.clone().unwrap_or_default();
        let mut host_config = old.host_config.clone().unwrap_or_default();
        host_config.mounts = (!mounts.is_empty()).then_some(mounts);
        let primary = host_config.network_mode.clone();
        let mut endpoints: Vec<(String, Option<String>)> = old
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, endpoint)| {
                let ip = endpoint
                    .ipam_config
                    .and_then(|ipam| ipam.ipv4_address)
                    .or(endpoint.ip_address)
                    .filter(|ip| !ip.is_empty());
                (name, ip)
            })
            .collect();
        // The network the container was made on first, the others connected after.
        endpoints.sort_by_key(|(name, _)| Some(name) != primary.as_ref());
        let endpoint = |ip: Option<String>| EndpointSettings {
            ipam_config: ip.map(|ip| EndpointIpamConfig {
                ipv4_address: Some(ip),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = endpoints
            .first()
            .filter(|(name, _)| Some(name) == primary.as_ref())
            .cloned();
        let skip = usize::from(first.is_some());
        let body = ContainerCreateBody {
            image: old.image.clone(),
            hostname: config.hostname,
            domainname: config.domainname,
            user: config.user,
            env: config.env,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            labels: config.labels,
            working_dir: config.working_dir,
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            exposed_ports: config.exposed_ports,
            host_config: Some(host_config),
            networking_config: first.map(|(name, ip)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(name, endpoint(ip))])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(vm_cid.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|error| cloud_error(format!("cannot re-create VM {vm_cid}: {error}")))?;
        for (name, ip) in endpoints.into_iter().skip(skip) {
            let request = NetworkConnectRequest {
                container: vm_cid.to_string(),
                endpoint_config: Some(endpoint(ip.clone())),
            };
            self.docker
                .connect_network(&name, request)
                .await
                .map_err(|error| {
                    cloud_error(format!(
                        "cannot connect the re-created VM {vm_cid} to Docker network {name}: \
                         {error}"
                    ))
                })?;
        }
        let options = UploadToContainerOptions {
            path: Path::new(AGENT_DIR_IN_VM)
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(vm_cid, Some(options), body_full(agent_dir.into()))
            .await
            .map_err(|error| {
                cloud_error(format!(
                    "cannot copy {AGENT_DIR_IN_VM} into the re-created VM {vm_cid}: {error}"
                ))
            })?;
        self.put_file(vm_cid, SETTINGS_IN_VM, settings, 0o600)
            .await?;
        if start {
            self.docker
                .start_container(vm_cid, None)
                .await
                .map_err(|error| {
                    cloud_error(format!("cannot start the re-created VM {vm_cid}: {error}"))
                })?;
        }
        Ok(())
    }

    /// Removes the networks of this CPI among `names` that no container uses any more.
    async fn remove_unused_networks(&self, names: impl Iterator<Item = &str>) {
        for name in names {
            let Ok(network) = self
                .docker
                .inspect_network(name, None::<InspectNetworkOptions>)
                .await
            else {
                continue;
            };
            let ours = network
                .labels
                .as_ref()
                .and_then(|labels| labels.get(DIRECTOR_LABEL))
                .is_some_and(|director| *director == self.config.director_id);
            let used = network
                .containers
                .as_ref()
                .is_some_and(|containers| !containers.is_empty());
            if ours && !used {
                // Another create_vm may have joined it meanwhile: the engine then refuses.
                let _ = self.docker.remove_network(name).await;
            }
        }
    }
}

impl Cpi for DockerCpi {
    fn info(&self) -> Result<Info> {
        Ok(Info {
            api_version: 2,
            stemcell_formats: vec!["docker-rootfs".to_string()],
        })
    }

    fn create_stemcell(&self, image_path: &Path, cloud_properties: &Value) -> Result<String> {
        let (repository, tag) = image_reference(cloud_properties)?;
        let reference = format!("{repository}:{tag}");
        self.block_on(async {
            let options = CreateImageOptions {
                from_src: Some("-".to_string()),
                repo: Some(repository.clone()),
                tag: Some(tag.clone()),
                // JSON quoting is the Dockerfile's double-quoted string.
                changes: vec![format!(
                    "LABEL {DIRECTOR_LABEL}={}",
                    Value::from(self.config.director_id.as_str())
                )],
                ..Default::default()
            };
            // Streamed: a stemcell's image is hundreds of megabytes.
            let image = tokio::fs::File::open(image_path).await.map_err(|error| {
                cloud_error(format!(
                    "cannot read stemcell image {}: {error}",
                    image_path.display()
                ))
            })?;
            let body = body_try_stream(tokio_util::io::ReaderStream::new(image));
            let mut progress = self.docker.create_image(Some(options), Some(body), None);
            while let Some(item) = progress.next().await {
                item.map_err(|error| {
                    cloud_error(format!(
                        "cannot import stemcell image {} as {reference}: {error}",
                        image_path.display()
                    ))
                })?;
            }
            let inspect = self
                .docker
                .inspect_image(&reference)
                .await
                .map_err(|error| {
                    cloud_error(format!(
                        "stemcell image {} imported, but {reference} cannot be inspected: {error}",
                        image_path.display()
                    ))
                })?;
            inspect.id.ok_or_else(|| {
                cloud_error(format!("the Docker engine gave {reference} no image id"))
            })
        })
    }

    fn delete_stemcell(&self, stemcell_cid: &str) -> Result<()> {
        self.block_on(async {
            let options = RemoveImageOptions {
                force: true,
                ..Default::default()
            };
            match self
                .docker
                .remove_image(stemcell_cid, Some(options), None)
                .await
            {
                Ok(_) => Ok(()),
                Err(error) if not_found(&error) => Ok(()),
                Err(error) => Err(cloud_error(format!(
                    "cannot delete stemcell {stemcell_cid}: {error}"
                ))),
            }
        })
    }

    fn create_vm(
        &self,
        agent_id: &str,
        stemcell_cid: &str,
        _cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        self.block_on(self.create_vm_async(
            agent_id,
            stemcell_cid,
            networks,
            disk_cids,
            environment,
        ))
    }

    fn delete_vm(&self, vm_cid: &str) -> Result<()> {
        self.block_on(async {
            let networks = match self.docker.inspect_container(vm_cid, None).await {
                Ok(container) => container
                    .network_settings
                    .and_then(|settings| settings.networks)
                    .map(|networks| networks.into_keys().collect::<Vec<_>>())
                    .unwrap_or_default(),
                Err(error) if not_found(&error) => return Err(vm_not_found(vm_cid)),
                Err(error) => {
                    return Err(cloud_error(format!("cannot inspect VM {vm_cid}: {error}")));
                }
            };
            if !self.remove_container(vm_cid).await? {
                return Err(vm_not_found(vm_cid));
            }
            self.remove_unused_networks(networks.iter().map(String::as_str))
                .await;
            Ok(())
        })
    }

    fn has_vm(&self, vm_cid: &str) -> Result<bool> {
        self.block_on(async {
            match self.docker.inspect_container(vm_cid, None).await {
                Ok(_) => Ok(true),
                Err(error) if not_found(&error) => Ok(false),
                Err(error) => Err(cloud_error(format!("cannot inspect VM {vm_cid}: {error}"))),
            }
        })
    }

    fn reboot_vm(&self, vm_cid: &str) -> Result<()> {
        self.block_on(async {
            let options = RestartContainerOptions {
                t: Some(STOP_TIMEOUT_SECONDS),
                ..Default::default()
            };
            self.docker
                .restart_container(vm_cid, Some(options))
                .await
                .map_err(|error| match not_found(&error) {
                    true => vm_not_found(vm_cid),
                    false => cloud_error(format!("cannot reboot VM {vm_cid}: {error}")),
                })
        })
    }

    fn set_vm_metadata(&self, vm_cid: &str, metadata: &Value) -> Result<()> {
        let contents = serde_json::to_vec_pretty(metadata).map_err(|error| {
            cloud_error(format!("cannot encode VM {vm_cid}'s metadata: {error}"))
        })?;
        self.block_on(self.put_file(vm_cid, METADATA_IN_VM, &contents, 0o644))
    }

    fn create_disk(
        &self,
        size_mb: u64,
        _cloud_properties: &Value,
        _vm_hint: Option<&str>,
    ) -> Result<String> {
        let disk_cid = format!("{}disk-{}", self.config.name_prefix, uuid::Uuid::new_v4());
        let mut labels = self.labels();
        labels.insert(DISK_SIZE_LABEL.to_string(), size_mb.to_string());
        let request = VolumeCreateRequest {
            name: Some(disk_cid.clone()),
            driver: Some("local".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        self.block_on(async {
            self.docker.create_volume(request).await.map_err(|error| {
                cloud_error(format!(
                    "cannot create disk {disk_cid} ({size_mb} MB): {error}"
                ))
            })?;
            Ok(disk_cid.clone())
        })
    }

    fn delete_disk(&self, disk_cid: &str) -> Result<()> {
        self.block_on(async {
            // A missing disk is deleted already; another director's volume is not touched.
            if !self.disk_exists(disk_cid).await? {
                return Ok(());
            }
            let options = RemoveVolumeOptions { force: false };
            match self.docker.remove_volume(disk_cid, Some(options)).await {
                Ok(()) => Ok(()),
                Err(error) if not_found(&error) => Ok(()),
                Err(error) if conflict(&error) => Err(cloud_error(format!(
                    "disk {disk_cid} is attached to a VM; detach it first"
                ))),
                Err(error) => Err(cloud_error(format!(
                    "cannot delete disk {disk_cid}: {error}"
                ))),
            }
        })
    }

    fn has_disk(&self, disk_cid: &str) -> Result<bool> {
        self.block_on(self.disk_exists(disk_cid))
    }

    fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<Value> {
        let hint = disk_hint(disk_cid);
        self.block_on(async {
            let container = self.inspect_vm(vm_cid).await?;
            if attached_disks(&container).iter().any(|d| d == disk_cid) {
                return Ok(hint.clone());
            }
            self.check_disk_free(disk_cid, vm_cid).await?;
            let mut mounts = mounts_of(&container);
            mounts.push(disk_mount(disk_cid));
            self.recreate_vm(vm_cid, &container, mounts, |persistent| {
                persistent.insert(disk_cid.to_string(), hint.clone());
            })
            .await?;
            Ok(hint.clone())
        })
    }

    fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<()> {
        self.block_on(async {
            let container = self.inspect_vm(vm_cid).await?;
            if !attached_disks(&container).iter().any(|d| d == disk_cid) {
                return Err(CpiError::new(
                    ErrorKind::DiskNotAttached,
                    format!("disk {disk_cid} is not attached to VM {vm_cid}"),
                ));
            }
            let mounts = mounts_of(&container)
                .into_iter()
                .filter(|mount| mounted_disk(mount) != Some(disk_cid))
                .collect();
            self.recreate_vm(vm_cid, &container, mounts, |persistent| {
                persistent.remove(disk_cid);
            })
            .await
        })
    }

    fn get_disks(&self, vm_cid: &str) -> Result<Vec<String>> {
        self.block_on(async { Ok(attached_disks(&self.inspect_vm(vm_cid).await?)) })
    }

    fn set_disk_metadata(&self, disk_cid: &str, _metadata: &Value) -> Result<()> {
        // Not kept (see the module's documentation); the disk must exist.
        match self.has_disk(disk_cid)? {
            true => Ok(()),
            false => Err(disk_not_found(disk_cid)),
        }
    }

    fn find_vm_by_agent_id(&self, agent_id: &str) -> Result<Option<String>> {
        self.block_on(async {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{DIRECTOR_LABEL}={}", self.config.director_id),
                    format!("{AGENT_ID_LABEL}={agent_id}"),
                ],
            )]);
            let options = bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            };
            let containers = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(|error| cloud_error(format!("cannot list containers: {error}")))?;
            Ok(containers
                .into_iter()
                .filter_map(|container| container.names)
                .flatten()
                .map(|name| name.trim_start_matches('/').to_string())
                .next())
        })
    }
}

/// A manual network of `create_vm`'s `networks`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ManualNetwork {
    ip: Ipv4Addr,
    subnet: Ipv4Addr,
    prefix_length: u32,
    gateway: Option<Ipv4Addr>,
}

impl ManualNetwork {
    fn parse(name: &str, spec: &Value) -> Result<ManualNetwork> {
        // The agent's own network type: what create_vm's `networks` hold.
        let spec: agent_protocol::NetworkSpec =
            serde_json::from_value(spec.clone()).map_err(|error| {
                CpiError::new(
                    ErrorKind::CpiError,
                    format!("network '{name}' is not a network spec: {error}"),
                )
            })?;
        let kind = if spec.kind.is_empty() {
            "manual"
        } else {
            spec.kind.as_str()
        };
        if kind != "manual" {
            return Err(CpiError::new(
                ErrorKind::NotSupported,
                format!(
                    "network '{name}' is of type {kind}; the Docker CPI supports manual networks only"
                ),
            ));
        }
        let address = |field: &str, text: &str| -> Result<Option<Ipv4Addr>> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| {
                CpiError::new(
                    ErrorKind::CpiError,
                    format!("network '{name}': {field} '{text}' is not an IPv4 address"),
                )
            })
        };
        let missing = |field: &str| {
            CpiError::new(
                ErrorKind::CpiError,
                format!("network '{name}' has no {field} (a manual network needs ip and netmask)"),
            )
        };
        let ip = address("ip", &spec.ip)?.ok_or_else(|| missing("ip"))?;
        let netmask =
            u32::from(address("netmask", &spec.netmask)?.ok_or_else(|| missing("netmask"))?);
        if netmask.leading_ones() + netmask.trailing_zeros() != 32 {
            return Err(CpiError::new(
                ErrorKind::CpiError,
                format!(
                    "network '{name}': netmask {} is not contiguous",
                    Ipv4Addr::from(netmask)
                ),
            ));
        }
        Ok(ManualNetwork {
            ip,
            subnet: Ipv4Addr::from(u32::from(ip) & netmask),
            prefix_length: netmask.leading_ones(),
            gateway: address("gateway", &spec.gateway)?,
        })
    }
}

/// The image's `<repository>:<tag>` from a stemcell's `cloud_properties` (`name`,
/// `version`), in Docker's alphabet: lowercase repository, tags of `[A-Za-z0-9_.-]`.
fn image_reference(cloud_properties: &Value) -> Result<(String, String)> {
    let field = |key: &str| {
        cloud_properties[key]
            .as_str()
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                CpiError::new(
                    ErrorKind::CpiError,
                    format!(
                        "the stemcell's cloud_properties have no {key} (the image is tagged \
                         <name>:<version>)"
                    ),
                )
            })
    };
    let repository: String = field("name")?
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-' | '_' | '/') => c,
            _ => '-',
        })
        .collect();
    let mut tag: String = field("version")?
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    if !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        tag.insert(0, '_');
    }
    tag.truncate(128);
    Ok((repository, tag))
}

/// A tar archive holding one file at `path` (relative) with `mode`, owned by root.
fn single_file_tar(path: &str, contents: &[u8], mode: u32) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, contents)?;
    builder.into_inner()
}

fn status(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn not_found(error: &DockerError) -> bool {
    status(error) == Some(404)
}

fn conflict(error: &DockerError) -> bool {
    status(error) == Some(409)
}

fn cloud_error(message: impl Into<String>) -> CpiError {
    CpiError::new(ErrorKind::CloudError, message)
}

fn creation_failed(message: impl Into<String>) -> CpiError {
    CpiError {
        kind: ErrorKind::VmCreationFailed,
        message: message.into(),
        ok_to_retry: true,
    }
}

fn vm_not_found(vm_cid: &str) -> CpiError {
    CpiError::new(ErrorKind::VmNotFound, format!("VM {vm_cid} not found"))
}

fn disk_not_found(disk_cid: &str) -> CpiError {
    CpiError::new(
        ErrorKind::DiskNotFound,
        format!("disk {disk_cid} not found"),
    )
}

/// What `attach_disk` answers for a disk, and puts in the agent's settings: where the
/// disk's volume is mounted in the VM.
fn disk_hint(disk_cid: &str) -> Value {
    serde_json::json!({ "path": format!("{DISKS_IN_VM}/{disk_cid}") })
}

/// The mount of a disk's volume in a VM.
fn disk_mount(disk_cid: &str) -> Mount {
    Mount {
        target: Some(format!("{DISKS_IN_VM}/{disk_cid}")),
        source: Some(disk_cid.to_string()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

/// Whether `mount` is an attached disk's; answers its CID.
fn mounted_disk(mount: &Mount) -> Option<&str> {
    let target = mount.target.as_deref()?.strip_prefix(DISKS_IN_VM)?;
    match (&mount.typ, mount.source.as_deref()) {
        (Some(MountType::VOLUME), Some(source)) if target.strip_prefix('/') == Some(source) => {
            Some(source)
        }
        _ => None,
    }
}

/// The mounts a container was made with.
fn mounts_of(container: &ContainerInspectResponse) -> Vec<Mount> {
    container
        .host_config
        .as_ref()
        .and_then(|host_config| host_config.mounts.clone())
        .unwrap_or_default()
}

/// The disks a container mounts, in attachment order.
fn attached_disks(container: &ContainerInspectResponse) -> Vec<String> {
    mounts_of(container)
        .iter()
        .filter_map(mounted_disk)
        .map(str::to_string)
        .collect()
}

/// The agent's settings in an archive of [`AGENT_DIR_IN_VM`] (entries `bosh/…`).
fn settings_in_archive(archive: &[u8]) -> std::result::Result<Option<Value>, String> {
    let wanted = Path::new(SETTINGS_IN_VM)
        .strip_prefix(
            Path::new(AGENT_DIR_IN_VM)
                .parent()
                .unwrap_or(Path::new("/")),
        )
        .map_err(|error| error.to_string())?;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().map_err(|error| error.to_string())? {
        let mut entry = entry.map_err(|error| error.to_string())?;
        if entry.path().map_err(|error| error.to_string())? != wanted {
            continue;
        }
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut text).map_err(|error| error.to_string())?;
        return serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| error.to_string());
    }
    Ok(None)
}

/// The `disks.persistent` map of the agent's settings, made when missing or null.
fn persistent_disks(settings: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let mut at = settings;
    for key in ["disks", "persistent"] {
        let next = at.as_object_mut()?.entry(key).or_insert(Value::Null);
        if next.is_null() {
            *next = Value::Object(serde_json::Map::new());
        }
        at = next;
    }
    at.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_manual_network_gives_its_subnet() {
        let spec = json!({"type": "manual", "ip": "10.244.3.7", "netmask": "255.255.255.0",
            "gateway": "10.244.3.1"});
        assert_eq!(
            ManualNetwork::parse("default", &spec).unwrap(),
            ManualNetwork {
                ip: Ipv4Addr::new(10, 244, 3, 7),
                subnet: Ipv4Addr::new(10, 244, 3, 0),
                prefix_length: 24,
                gateway: Some(Ipv4Addr::new(10, 244, 3, 1)),
            }
        );
    }

    #[test]
    fn other_networks_are_refused_with_their_name() {
        let error = ManualNetwork::parse("public", &json!({"type": "dynamic"})).unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotSupported);
        assert!(error.message.contains("'public'"), "{}", error.message);
        let error = ManualNetwork::parse(
            "default",
            &json!({"ip": "10.0.0.2", "netmask": "255.0.255.0"}),
        )
        .unwrap_err();
        assert!(
            error.message.contains("not contiguous"),
            "{}",
            error.message
        );
        let error = ManualNetwork::parse("default", &json!({"netmask": "255.0.0.0"})).unwrap_err();
        assert!(error.message.contains("no ip"), "{}", error.message);
    }

    #[test]
    fn only_volumes_below_the_disks_directory_are_disks() {
        assert_eq!(mounted_disk(&disk_mount("d-1")), Some("d-1"));
        let elsewhere = Mount {
            target: Some("/var/vcap/data".to_string()),
            ..disk_mount("d-1")
        };
        assert_eq!(mounted_disk(&elsewhere), None);
        let bind = Mount {
            typ: Some(MountType::BIND),
            ..disk_mount("d-1")
        };
        assert_eq!(mounted_disk(&bind), None);
    }

    #[test]
    fn persistent_disks_of_settings_are_made_when_missing_and_never_replace_data() {
        let mut settings = json!({"agent_id": "a", "disks": {"persistent": null}});
        persistent_disks(&mut settings)
            .unwrap()
            .insert("d-1".to_string(), disk_hint("d-1"));
        assert_eq!(
            settings["disks"]["persistent"]["d-1"]["path"],
            "/var/vcap/disks/d-1"
        );
        let mut settings = json!({"agent_id": "a"});
        assert!(persistent_disks(&mut settings).unwrap().is_empty());
        assert!(persistent_disks(&mut json!({"disks": []})).is_none());
        assert!(persistent_disks(&mut json!("text")).is_none());
    }

    #[test]
    fn image_references_use_dockers_alphabet() {
        let properties = json!({"name": "bosh-docker-Debian", "version": "12.8+dev.1"});
        assert_eq!(
            image_reference(&properties).unwrap(),
            ("bosh-docker-debian".to_string(), "12.8_dev.1".to_string())
        );
        let error = image_reference(&json!({"name": "x"})).unwrap_err();
        assert!(error.message.contains("no version"), "{}", error.message);
    }
}
