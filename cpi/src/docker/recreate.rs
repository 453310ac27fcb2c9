//! Re-creating a VM's container with other mounts (`attach_disk`, `detach_disk`): Docker
//! cannot mount a volume into a running container.
//!
//! The new container has the old one's name (the CID), image, hostname, labels, networks
//! and IPs, host settings (limits, published ports, privileged) and mounts but the disk that
//! changes, so it keeps the VM's ephemeral volume ([`super::DATA_IN_VM`]); the agent's
//! directories outside it ([`CARRIED_OVER_IN_VM`]) are streamed from the old container into
//! the new one, and the agent's settings get the new `disks.persistent`. The old container
//! is stopped and renamed `<cid>-replaced` meanwhile, comes back when anything fails, and
//! is removed once the new one runs.

use std::collections::HashMap;
use std::path::Path;

use bollard::body_try_stream;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings, Mount,
    NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, RenameContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt as _;
use serde_json::Value;

use super::volumes::{CARRIED_OVER_IN_VM, json_in_archive, persistent_disks};
use super::{
    DockerCpi, SETTINGS_IN_VM, STOP_TIMEOUT_SECONDS, cloud_error, not_found, replaced_name, status,
};
use crate::{CpiError, Result};

impl DockerCpi {
    /// Re-creates the VM's container (`old`) with `mounts` and the agent's settings changed
    /// by `edit` (their `disks.persistent`); running when the old one ran.
    pub(super) async fn recreate_vm(
        &self,
        vm_cid: &str,
        old: &ContainerInspectResponse,
        mounts: Vec<Mount>,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<()> {
        let settings = self.edited_settings(vm_cid, edit).await?;
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
        let replaced = replaced_name(vm_cid);
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
            .create_replacement(vm_cid, &replaced, old, mounts, &settings, running)
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

    /// The agent's settings of VM `vm_cid` with `disks.persistent` changed by `edit`, encoded.
    async fn edited_settings(
        &self,
        vm_cid: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<Vec<u8>> {
        let archive = self.download(vm_cid, SETTINGS_IN_VM).await?;
        let mut settings = json_in_archive(&archive, SETTINGS_IN_VM)
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
        serde_json::to_vec_pretty(&settings)
            .map_err(|error| cloud_error(format!("cannot encode the agent's settings: {error}")))
    }

    /// Makes (and starts when `start`) the container `vm_cid` re-creating `old`, now named
    /// `replaced`.
    async fn create_replacement(
        &self,
        vm_cid: &str,
        replaced: &str,
        old: &ContainerInspectResponse,
        mounts: Vec<Mount>,
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
        // Concurrently: each archive request mounts a container's file system.
        futures::future::try_join_all(
            CARRIED_OVER_IN_VM.map(|dir| self.carry_over(replaced, vm_cid, dir)),
        )
        .await?;
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

    /// Streams the directory `dir` of the container `from` into the container `to` (the
    /// engine's archive API, which works on stopped containers); a `dir` that `from` does
    /// not have is skipped.
    async fn carry_over(&self, from: &str, to: &str, dir: &str) -> Result<()> {
        let options = DownloadFromContainerOptions {
            path: dir.to_string(),
        };
        let mut download = self.docker.download_from_container(from, Some(options));
        let first = match download.next().await {
            None => return Ok(()),
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) if not_found(&error) => return Ok(()),
            Some(Err(error)) => {
                return Err(cloud_error(format!(
                    "cannot read {dir} of {from} to re-create VM {to}: {error}"
                )));
            }
        };
        let archive = futures::stream::iter([Ok(first)])
            .chain(download.map(|chunk| chunk.map_err(std::io::Error::other)));
        let options = UploadToContainerOptions {
            path: Path::new(dir)
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(to, Some(options), body_try_stream(archive))
            .await
            .map_err(|error| {
                cloud_error(format!(
                    "cannot copy {dir} into the re-created VM {to}: {error}"
                ))
            })
    }
}
