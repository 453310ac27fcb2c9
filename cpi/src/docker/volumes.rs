//! Volumes in a VM's container: persistent disks mounted at `/var/vcap/disks/<disk cid>`,
//! the VM's ephemeral volume at `/var/vcap/data`, and the agent's settings that name the
//! disks. Pure.

use std::path::Path;

use bollard::models::{ContainerInspectResponse, Mount, MountType};
use serde_json::Value;

/// Where attached disks' volumes are mounted in a VM, each at `<DISKS_IN_VM>/<disk cid>`.
pub const DISKS_IN_VM: &str = "/var/vcap/disks";
/// Where a VM's ephemeral volume ([`ephemeral_volume_name`]) is mounted: the agent's data
/// directory (BOSH's ephemeral disk: unpacked packages and jobs, the jobs' data).
pub const DATA_IN_VM: &str = "/var/vcap/data";
/// The label of a VM's ephemeral volume naming its VM (the volume is not a disk).
pub const EPHEMERAL_FOR_LABEL: &str = "bosh.ephemeral-for";
/// The agent's directories outside its data directory and the persistent disk that a VM's
/// re-created container gets from the old one (the agent's settings and state, the links
/// to installed jobs and packages, the jobs' logs and pid files).
pub(super) const CARRIED_OVER_IN_VM: [&str; 4] = [
    "/var/vcap/bosh",
    "/var/vcap/jobs",
    "/var/vcap/packages",
    "/var/vcap/sys",
];

/// The name of VM `vm_cid`'s ephemeral volume: `<vm_cid>-data`.
pub fn ephemeral_volume_name(vm_cid: &str) -> String {
    format!("{vm_cid}-data")
}

/// The mount of VM `vm_cid`'s ephemeral volume.
pub(super) fn ephemeral_mount(vm_cid: &str) -> Mount {
    Mount {
        target: Some(DATA_IN_VM.to_string()),
        source: Some(ephemeral_volume_name(vm_cid)),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

/// What `attach_disk` answers for a disk, and puts in the agent's settings: where the
/// disk's volume is mounted in the VM.
pub(super) fn disk_hint(disk_cid: &str) -> Value {
    serde_json::json!({ "path": format!("{DISKS_IN_VM}/{disk_cid}") })
}

/// The mount of a disk's volume in a VM.
pub(super) fn disk_mount(disk_cid: &str) -> Mount {
    Mount {
        target: Some(format!("{DISKS_IN_VM}/{disk_cid}")),
        source: Some(disk_cid.to_string()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

/// Whether `mount` is an attached disk's; answers its CID.
pub(super) fn mounted_disk(mount: &Mount) -> Option<&str> {
    let target = mount.target.as_deref()?.strip_prefix(DISKS_IN_VM)?;
    match (&mount.typ, mount.source.as_deref()) {
        (Some(MountType::VOLUME), Some(source)) if target.strip_prefix('/') == Some(source) => {
            Some(source)
        }
        _ => None,
    }
}

/// The mounts a container was made with.
pub(super) fn mounts_of(container: &ContainerInspectResponse) -> Vec<Mount> {
    container
        .host_config
        .as_ref()
        .and_then(|host_config| host_config.mounts.clone())
        .unwrap_or_default()
}

/// The disks a container mounts, in attachment order (its ephemeral volume is not one).
pub(super) fn attached_disks(container: &ContainerInspectResponse) -> Vec<String> {
    mounts_of(container)
        .iter()
        .filter_map(mounted_disk)
        .map(str::to_string)
        .collect()
}

/// The JSON file `path` of a tar archive of it (as the engine's archive API gives one file:
/// one entry named after the file).
pub(super) fn json_in_archive(archive: &[u8], path: &str) -> Result<Option<Value>, String> {
    let wanted = Path::new(path)
        .file_name()
        .ok_or_else(|| format!("{path} names no file"))?;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().map_err(|error| error.to_string())? {
        let mut entry = entry.map_err(|error| error.to_string())?;
        if entry.path().map_err(|error| error.to_string())?.as_os_str() != wanted {
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
pub(super) fn persistent_disks(
    settings: &mut Value,
) -> Option<&mut serde_json::Map<String, Value>> {
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
        assert_eq!(mounted_disk(&ephemeral_mount("vm-1")), None);
    }

    #[test]
    fn a_vms_ephemeral_volume_is_named_after_it_and_mounted_at_its_data() {
        assert_eq!(ephemeral_volume_name("bosh-vm-1"), "bosh-vm-1-data");
        let mount = ephemeral_mount("bosh-vm-1");
        assert_eq!(mount.source.as_deref(), Some("bosh-vm-1-data"));
        assert_eq!(mount.target.as_deref(), Some("/var/vcap/data"));
    }

    #[test]
    fn a_json_file_is_read_from_its_archive() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        let text = br#"{"agent_id": "a"}"#;
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        builder
            .append_data(&mut header, "settings.json", &text[..])
            .unwrap();
        let archive = builder.into_inner().unwrap();
        assert_eq!(
            json_in_archive(&archive, "/var/vcap/bosh/settings.json").unwrap(),
            Some(json!({"agent_id": "a"}))
        );
        assert_eq!(
            json_in_archive(&archive, "/var/vcap/bosh/other.json").unwrap(),
            None
        );
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
}
