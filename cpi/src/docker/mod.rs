//! `DockerCpi`: a VM is a container of the local Docker engine (feature `docker`).
//!
//! - Stemcells: `create_stemcell` imports a `docker-rootfs` stemcell's image (a gzipped root
//!   file system tarball) with the engine's image import (`POST /images/create?fromSrc=-`, no
//!   registry), tagged `<name>:<version>` from the stemcell's `cloud_properties`; the CID is
//!   the image id (`sha256:…`); the image is labelled with the director
//!   ([`DIRECTOR_LABEL`]). `delete_stemcell` removes the image (not forced: an image a
//!   container still uses is refused, naming it, rather than left behind untagged); a
//!   missing one succeeds, as in [`crate::local`].
//! - VMs: a container named `<prefix>vm-<uuid>` (the CID) from the stemcell's image, whose
//!   main process is the agent (`/var/vcap/bosh/bin/bosh-agent --settings
//!   /var/vcap/bosh/settings.json`) under Docker's init (`--init`, which reaps zombies). Its
//!   hostname is the CID (the director does not pass the instance id to `create_vm`). The
//!   agent's settings (mode 0600) are copied into the created container before it starts.
//!   `cloud_properties` set its memory and CPU limits, published ports and privileged mode
//!   ([`VmProperties`], [`VM_CLOUD_PROPERTIES`]; anything else is refused).
//! - Labels (fixed when the container is made, [`vm_labels`]): the director
//!   ([`DIRECTOR_LABEL`]), the agent ([`AGENT_ID_LABEL`]), each string of the
//!   environment's `bosh.metadata` as `bosh.<key>` (deployment, instance group, index, id,
//!   name; a compilation VM's `compiling`) and `bosh.group` ([`GROUP_LABEL`]).
//! - Networks: every manual network of `create_vm` is a user-defined bridge network named
//!   `<prefix>net-<a.b.c.d>-<prefix length>` after its subnet (from the IP and netmask the
//!   director gives), with the director's gateway, made on first use and labelled with the
//!   director; the container gets the IP the director allocated. `delete_vm` removes the
//!   VM's networks that no other container uses. Dynamic and VIP networks are refused
//!   (`NotSupported`) in this version. [`DockerCpi::agent_address`] is where containers of
//!   these networks reach the host (its address on Docker's default bridge).
//! - Metadata: labels cannot change on a container, so `set_vm_metadata` keeps the metadata
//!   in a file in the container, `/var/vcap/bosh/vm-metadata.json` (copied in with the
//!   engine's archive API, which works on stopped containers too); it goes with the
//!   container.
//! - Ephemeral data: each VM has a named volume `<vm cid>-data`
//!   ([`ephemeral_volume_name`], labelled with the director and [`EPHEMERAL_FOR_LABEL`])
//!   mounted at `/var/vcap/data` ([`DATA_IN_VM`]), BOSH's ephemeral disk, where the agent
//!   unpacks packages and jobs and jobs keep their data. It is not a persistent disk
//!   (`has_disk` says no, `delete_disk` refuses it) and goes with the VM: `delete_vm`
//!   removes it, and so does a failed `create_vm`.
//! - Persistent disks: a disk is a named volume `<prefix>disk-<uuid>` (the CID), labelled
//!   with the director and its size in MB ([`DISK_SIZE_LABEL`]; recorded, not enforced:
//!   the local driver has no sizes). Docker cannot mount a volume into a running container,
//!   so `attach_disk` and `detach_disk` re-create the VM's container (module `recreate`): same
//!   name, image, hostname, labels, networks and IPs, host settings and ephemeral volume,
//!   the agent's directories outside it carried over (`/var/vcap/bosh`, `jobs`, `packages`,
//!   `sys`), and the disk's volume mounted at `/var/vcap/disks/<disk cid>` ([`DISKS_IN_VM`])
//!   or not. The answer of `attach_disk`, also put in the settings' `disks.persistent` as
//!   the local CPI does, is `{"path": "/var/vcap/disks/<disk cid>"}`: the agent's
//!   `mount_disk` makes `/var/vcap/store` show that directory (a volume mounted at the store
//!   itself would leave the agent nothing to mount, and `migrate_disk` needs both disks at
//!   once), and shows it again when it starts in the re-created container. `get_disks`
//!   lists the volumes mounted below [`DISKS_IN_VM`]; `delete_disk` refuses a disk a
//!   container still mounts. `set_disk_metadata` checks that the disk exists and keeps
//!   nothing: a volume's labels cannot change, and a file on the volume would show in the
//!   job's data.
//!
//! Calls are blocking: each runs on the CPI's own small tokio runtime, so a `DockerCpi` must
//! not be made or called from inside an async task (the director calls CPIs on blocking
//! threads); it may be dropped anywhere.
//!
//! A `create_vm` racing a `delete_vm` that removes the network it is about to join fails
//! with `VMCreationFailed` and `ok_to_retry` (the retry makes the network again).

mod labels;
mod network;
mod properties;
mod recreate;
mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    InspectNetworkOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
    RemoveImageOptions, RemoveVolumeOptions, RestartContainerOptions, UploadToContainerOptions,
};
use bollard::{body_full, body_try_stream};
use futures::StreamExt as _;
use serde_json::Value;

pub use labels::{AGENT_ID_LABEL, DIRECTOR_LABEL, GROUP_LABEL, METADATA_LABEL_PREFIX, vm_labels};
use network::{ManualNetwork, Subnet, host_address_on};
pub use properties::{PublishedPort, VM_CLOUD_PROPERTIES, VmProperties};
pub use volumes::{DATA_IN_VM, DISKS_IN_VM, EPHEMERAL_FOR_LABEL, ephemeral_volume_name};
use volumes::{attached_disks, disk_hint, disk_mount, ephemeral_mount, mounted_disk, mounts_of};

use crate::{Cpi, CpiError, ErrorKind, Info, Result};

/// The agent in a stemcell's image.
pub const AGENT_IN_VM: &str = "/var/vcap/bosh/bin/bosh-agent";
/// Where `create_vm` puts the agent's settings.
pub const SETTINGS_IN_VM: &str = "/var/vcap/bosh/settings.json";
/// The label of a disk's volume holding its size in MB.
pub const DISK_SIZE_LABEL: &str = "bosh.disk-size-mb";
/// Where `set_vm_metadata` keeps a VM's metadata.
pub const METADATA_IN_VM: &str = "/var/vcap/bosh/vm-metadata.json";
/// The Docker network whose gateway is [`DockerCpi::agent_address`].
const DEFAULT_BRIDGE: &str = "bridge";
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
    /// The director's id, put on every container, network, volume and image as
    /// [`DIRECTOR_LABEL`].
    pub director_id: String,
    /// Put before the names of containers, networks and volumes (e.g. `bosh-`), so several
    /// directors (or test runs) share one engine.
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

    /// The address at which containers on any of this CPI's bridge networks reach this host
    /// (where the director's bus and blobstore should listen for their agents): this host's
    /// address on Docker's default `bridge` network, i.e. its IPAM gateway, or, when the
    /// engine does not list one (it omits it when `docker0` existed before it started), the
    /// host's own address on that network's subnet. Linux delivers a packet from any bridge
    /// to an address of the host locally, so the address serves every network of the CPI.
    /// The engine must be on this host (the CPI talks to it over a Unix socket).
    pub fn agent_address(&self) -> Result<Ipv4Addr> {
        let network = self.block_on(async {
            self.docker
                .inspect_network(DEFAULT_BRIDGE, None::<InspectNetworkOptions>)
                .await
                .map_err(|error| {
                    cloud_error(format!(
                        "cannot inspect Docker's default network '{DEFAULT_BRIDGE}' for the \
                         address containers reach the host at: {error}"
                    ))
                })
        })?;
        let configs = network
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default();
        if let Some(gateway) = configs
            .iter()
            .filter_map(|config| config.gateway.as_deref()?.parse::<Ipv4Addr>().ok())
            .next()
        {
            return Ok(gateway);
        }
        let Some(subnet) = configs
            .iter()
            .filter_map(|config| Subnet::parse(config.subnet.as_deref()?))
            .next()
        else {
            return Err(cloud_error(format!(
                "Docker's default network '{DEFAULT_BRIDGE}' has no IPv4 gateway or subnet: no \
                 address for containers to reach the host at"
            )));
        };
        host_address_on(subnet).map_err(|reason| {
            cloud_error(format!(
                "Docker's default network '{DEFAULT_BRIDGE}' lists no gateway, and {reason}"
            ))
        })
    }

    /// Runs `future` to its end on the CPI's runtime (there until the CPI is dropped).
    fn block_on<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err(cloud_error("the Docker CPI is shut down")),
        }
    }

    /// The labels of what this CPI makes besides containers: its director.
    fn director_labels(&self) -> HashMap<String, String> {
        HashMap::from([(DIRECTOR_LABEL.to_string(), self.config.director_id.clone())])
    }

    /// Whether `labels` (of a network, volume or container) name this CPI's director.
    fn is_ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels
            .and_then(|labels| labels.get(DIRECTOR_LABEL))
            .is_some_and(|director| *director == self.config.director_id)
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
                labels: Some(self.director_labels()),
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
        cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        // Everything that can be refused before anything is made.
        let properties = VmProperties::parse(cloud_properties)?;
        let mut manual_networks = Vec::new();
        if let Value::Object(networks) = networks {
            for (name, spec) in networks {
                manual_networks.push((name.clone(), ManualNetwork::parse(name, spec)?));
            }
        }
        let vm_cid = format!("{}vm-{}", self.config.name_prefix, uuid::Uuid::new_v4());
        let mut settings = crate::local::agent_settings(agent_id, &vm_cid, networks, environment)
            .map_err(|message| CpiError::new(ErrorKind::CpiError, message))?;
        own_resolver(&mut settings.env);
        let mut mounts = vec![ephemeral_mount(&vm_cid)];
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
        let mut host_config = HostConfig {
            init: Some(true),
            mounts: Some(mounts),
            ..Default::default()
        };
        properties.apply(&mut host_config)?;
        let body = ContainerCreateBody {
            image: Some(stemcell_cid.to_string()),
            hostname: Some(vm_cid.clone()),
            labels: Some(vm_labels(&self.config.director_id, agent_id, environment)),
            entrypoint: Some(vec![AGENT_IN_VM.to_string()]),
            cmd: Some(vec!["--settings".to_string(), SETTINGS_IN_VM.to_string()]),
            exposed_ports: properties.exposed_ports(),
            host_config: Some(host_config),
            ..Default::default()
        };
        // From here on, what was made goes again when anything fails.
        let mut endpoints = Vec::new();
        let made = self
            .make_vm(&vm_cid, &manual_networks, &mut endpoints, body, &settings)
            .await;
        if let Err(error) = made {
            let _ = self.remove_container(&vm_cid).await;
            let _ = self.remove_ephemeral_volume(&vm_cid).await;
            self.remove_unused_networks(endpoints.iter().map(|(name, _)| name.as_str()))
                .await;
            return Err(error);
        }
        Ok((vm_cid, networks.clone()))
    }

    /// Makes VM `vm_cid`: its networks (each put in `endpoints` once it exists), its
    /// ephemeral volume, its container from `body` on them, its settings; then starts it.
    async fn make_vm(
        &self,
        vm_cid: &str,
        manual_networks: &[(String, ManualNetwork)],
        endpoints: &mut Vec<(String, Ipv4Addr)>,
        mut body: ContainerCreateBody,
        settings: &[u8],
    ) -> Result<()> {
        for (name, spec) in manual_networks {
            let docker_name = self.ensure_network(name, spec).await?;
            endpoints.push((docker_name, spec.ip));
        }
        let endpoint = |ip: Ipv4Addr| EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = endpoints.first().cloned();
        if let Some(host_config) = body.host_config.as_mut() {
            host_config.network_mode = Some(
                first
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |(name, _)| name.clone()),
            );
        }
        body.networking_config = first.map(|(name, ip)| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(name, endpoint(ip))])),
        });
        self.create_ephemeral_volume(vm_cid).await?;
        let options = CreateContainerOptions {
            name: Some(vm_cid.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|error| creation_failed(format!("cannot create VM {vm_cid}: {error}")))?;
        for (name, ip) in endpoints.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: vm_cid.to_string(),
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
        self.put_file(vm_cid, SETTINGS_IN_VM, settings, 0o600)
            .await?;
        self.docker
            .start_container(vm_cid, None)
            .await
            .map_err(|error| creation_failed(format!("cannot start VM {vm_cid}: {error}")))
    }

    /// Makes VM `vm_cid`'s ephemeral volume.
    async fn create_ephemeral_volume(&self, vm_cid: &str) -> Result<()> {
        let name = ephemeral_volume_name(vm_cid);
        let mut labels = self.director_labels();
        labels.insert(EPHEMERAL_FOR_LABEL.to_string(), vm_cid.to_string());
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            driver: Some("local".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|error| {
                creation_failed(format!(
                    "cannot create VM {vm_cid}'s ephemeral volume {name}: {error}"
                ))
            })
    }

    /// Removes VM `vm_cid`'s ephemeral volume when it is there and ours; answers whether it
    /// was there. Its containers must be gone.
    async fn remove_ephemeral_volume(&self, vm_cid: &str) -> Result<bool> {
        let name = ephemeral_volume_name(vm_cid);
        match self.volume_labels(&name).await? {
            Some(labels)
                if self.is_ours(Some(&labels))
                    && labels.get(EPHEMERAL_FOR_LABEL).map(String::as_str) == Some(vm_cid) => {}
            _ => return Ok(false),
        }
        let options = RemoveVolumeOptions { force: false };
        match self.docker.remove_volume(&name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(error) if not_found(&error) => Ok(false),
            Err(error) => Err(cloud_error(format!(
                "cannot delete VM {vm_cid}'s ephemeral volume {name}: {error}"
            ))),
        }
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

    /// A container when it is there and this director's.
    async fn our_container(&self, name: &str) -> Result<Option<ContainerInspectResponse>> {
        match self.docker.inspect_container(name, None).await {
            Ok(container) => {
                let labels = container.config.as_ref().and_then(|c| c.labels.as_ref());
                Ok(self.is_ours(labels).then_some(container))
            }
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(cloud_error(format!(
                "cannot inspect container {name}: {error}"
            ))),
        }
    }

    /// A volume's labels, or `None` when there is no such volume.
    async fn volume_labels(&self, name: &str) -> Result<Option<HashMap<String, String>>> {
        match self.docker.inspect_volume(name).await {
            Ok(volume) => Ok(Some(volume.labels)),
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(cloud_error(format!(
                "cannot inspect volume {name}: {error}"
            ))),
        }
    }

    /// Whether the volume `disk_cid` exists, is this director's and is a persistent disk
    /// (not a VM's ephemeral volume).
    async fn disk_exists(&self, disk_cid: &str) -> Result<bool> {
        Ok(self.volume_labels(disk_cid).await?.is_some_and(|labels| {
            self.is_ours(Some(&labels)) && !labels.contains_key(EPHEMERAL_FOR_LABEL)
        }))
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

    /// The networks a container is on.
    fn networks_of(container: &ContainerInspectResponse) -> Vec<String> {
        container
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .map(|networks| networks.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The names of this director's networks.
    async fn our_networks(&self) -> Result<Vec<String>> {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{DIRECTOR_LABEL}={}", self.config.director_id)],
            )])),
        };
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|error| cloud_error(format!("cannot list networks: {error}")))?;
        Ok(networks
            .into_iter()
            .filter_map(|network| network.name)
            .collect())
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
            let used = network
                .containers
                .as_ref()
                .is_some_and(|containers| !containers.is_empty());
            if self.is_ours(network.labels.as_ref()) && !used {
                // Another create_vm may have joined it meanwhile: the engine then refuses.
                let _ = self.docker.remove_network(name).await;
            }
        }
    }

    async fn delete_vm_async(&self, vm_cid: &str) -> Result<()> {
        let container = match self.docker.inspect_container(vm_cid, None).await {
            Ok(container) => Some(container),
            Err(error) if not_found(&error) => None,
            Err(error) => {
                return Err(cloud_error(format!("cannot inspect VM {vm_cid}: {error}")));
            }
        };
        // The old container of a re-creation that was interrupted.
        let replaced = self.our_container(&replaced_name(vm_cid)).await?;
        let mut networks: Vec<String> = container.iter().flat_map(Self::networks_of).collect();
        networks.extend(replaced.iter().flat_map(Self::networks_of));
        if container.is_none() && replaced.is_none() {
            // Removed behind the CPI's back: its networks are not known, so every network
            // of this director that no container uses goes.
            networks = self.our_networks().await?;
        }
        let removed = match container {
            Some(_) => self.remove_container(vm_cid).await?,
            None => false,
        };
        if replaced.is_some() {
            self.remove_container(&replaced_name(vm_cid)).await?;
        }
        // A failed create_vm or an interrupted delete_vm may leave the volume alone.
        self.remove_ephemeral_volume(vm_cid).await?;
        self.remove_unused_networks(networks.iter().map(String::as_str))
            .await;
        match removed {
            true => Ok(()),
            false => Err(vm_not_found(vm_cid)),
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
            // Not forced: forcing untags an image a stopped container uses and leaves it.
            let options = RemoveImageOptions {
                force: false,
                ..Default::default()
            };
            match self
                .docker
                .remove_image(stemcell_cid, Some(options), None)
                .await
            {
                Ok(_) => Ok(()),
                Err(error) if not_found(&error) => Ok(()),
                Err(error) if conflict(&error) => Err(cloud_error(format!(
                    "stemcell {stemcell_cid} is still used; delete its VMs first: {error}"
                ))),
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
        cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        self.block_on(self.create_vm_async(
            agent_id,
            stemcell_cid,
            cloud_properties,
            networks,
            disk_cids,
            environment,
        ))
    }

    fn delete_vm(&self, vm_cid: &str) -> Result<()> {
        self.block_on(self.delete_vm_async(vm_cid))
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
        let mut labels = self.director_labels();
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
            let Some(labels) = self.volume_labels(disk_cid).await? else {
                return Ok(());
            };
            if !self.is_ours(Some(&labels)) {
                return Ok(());
            }
            if let Some(vm_cid) = labels.get(EPHEMERAL_FOR_LABEL) {
                return Err(cloud_error(format!(
                    "{disk_cid} is VM {vm_cid}'s ephemeral volume, not a persistent disk; it \
                     goes with its VM"
                )));
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
            let options = ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            };
            let containers = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(|error| cloud_error(format!("cannot list containers: {error}")))?;
            // Not the old container of a re-creation in progress: it is not the VM.
            Ok(containers
                .into_iter()
                .filter_map(|container| container.names)
                .flatten()
                .map(|name| name.trim_start_matches('/').to_string())
                .find(|name| !is_replaced_name(name)))
        })
    }
}

/// The name of VM `vm_cid`'s old container while it is re-created.
/// A container's `/etc/resolv.conf` is its own (Docker writes one per container): the
/// agent may point it at its DNS server, unless the environment says otherwise (or is not
/// the map of maps it should be, which the agent then reads as no settings).
fn own_resolver(env: &mut Value) {
    fn object(value: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
        if value.is_null() {
            *value = Value::Object(serde_json::Map::new());
        }
        value.as_object_mut()
    }
    let Some(env) = object(env) else { return };
    let Some(bosh) = object(env.entry("bosh").or_insert(Value::Null)) else {
        return;
    };
    let Some(agent) = object(bosh.entry("agent").or_insert(Value::Null)) else {
        return;
    };
    agent
        .entry("resolv_conf")
        .or_insert_with(|| Value::from("/etc/resolv.conf"));
}

fn replaced_name(vm_cid: &str) -> String {
    format!("{vm_cid}{REPLACED_SUFFIX}")
}

/// Put after a VM's CID to name its old container while it is re-created.
const REPLACED_SUFFIX: &str = "-replaced";

fn is_replaced_name(name: &str) -> bool {
    name.ends_with(REPLACED_SUFFIX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_agent_may_point_a_containers_resolver_at_itself_unless_told_otherwise() {
        let mut env = Value::Null;
        own_resolver(&mut env);
        assert_eq!(
            env,
            json!({"bosh": {"agent": {"resolv_conf": "/etc/resolv.conf"}}})
        );
        let mut env = json!({"bosh": {"agent": {"resolv_conf": "/etc/other"}, "group": "g"}});
        own_resolver(&mut env);
        assert_eq!(env["bosh"]["agent"]["resolv_conf"], "/etc/other");
        assert_eq!(env["bosh"]["group"], "g");
        let mut odd = json!({"bosh": "not a map"});
        own_resolver(&mut odd);
        assert_eq!(odd, json!({"bosh": "not a map"}));
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
