//! Reading a `local` stemcell's image: a gzipped rootfs tarball of which the local CPI keeps
//! only the agent (`var/vcap/bosh/bin/bosh-agent`) and its `agent.json`, since local VMs run
//! on the host's OS.
//!
//! The whole archive is read (streamed, nothing else written) so that an image with an entry
//! that would leave the root (`..`, an absolute path, a hard link to one) is refused as a
//! whole. The two files are written by this code under fixed names into the directory it
//! is given, never to a path taken from the archive.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use tar::EntryType;

/// Where the agent is in the image.
pub const AGENT_PATH: &str = "var/vcap/bosh/bin/bosh-agent";
/// Where the agent's configuration is in the image.
pub const AGENT_CONFIG_PATH: &str = "var/vcap/bosh/agent.json";

/// The file names under a stemcell's directory.
pub const AGENT_FILE: &str = "bosh-agent";
/// See [`AGENT_FILE`].
pub const AGENT_CONFIG_FILE: &str = "agent.json";

/// The largest agent binary taken (a bound on what a hostile image can make us write).
const MAX_AGENT_BYTES: u64 = 1 << 30;
/// The largest `agent.json` taken.
const MAX_AGENT_CONFIG_BYTES: u64 = 1 << 20;

/// Reads the image at `image` and writes its agent (mode 0755) and `agent.json` (when it has
/// one) into `into`, an existing empty directory. Errors are messages for the user.
pub fn extract_agent(image: &Path, into: &Path) -> Result<(), String> {
    let file = File::open(image)
        .map_err(|error| format!("cannot open stemcell image {}: {error}", image.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(io::BufReader::new(file)));
    let entries = archive
        .entries()
        .map_err(|error| unreadable(image, &error))?;
    let mut found_agent = false;
    let mut found_config = false;
    for entry in entries {
        let mut entry = entry.map_err(|error| unreadable(image, &error))?;
        let raw_path = entry
            .path()
            .map_err(|error| unreadable(image, &error))?
            .into_owned();
        let path = inside_root(&raw_path).ok_or_else(|| {
            format!(
                "stemcell image {} has an entry outside its root: {}",
                image.display(),
                raw_path.display()
            )
        })?;
        let kind = entry.header().entry_type();
        if kind == EntryType::Link {
            let target = entry
                .link_name()
                .map_err(|error| unreadable(image, &error))?
                .unwrap_or_default();
            if inside_root(&target).is_none() {
                return Err(format!(
                    "stemcell image {} has a hard link outside its root: {} -> {}",
                    image.display(),
                    raw_path.display(),
                    target.display()
                ));
            }
        }
        let (name, limit, found) = if path == Path::new(AGENT_PATH) {
            (AGENT_FILE, MAX_AGENT_BYTES, &mut found_agent)
        } else if path == Path::new(AGENT_CONFIG_PATH) {
            (AGENT_CONFIG_FILE, MAX_AGENT_CONFIG_BYTES, &mut found_config)
        } else {
            continue;
        };
        if *found {
            return Err(format!(
                "stemcell image {} has {} twice",
                image.display(),
                path.display()
            ));
        }
        if !matches!(kind, EntryType::Regular | EntryType::Continuous) {
            return Err(format!(
                "stemcell image {}: {} is not a regular file ({kind:?})",
                image.display(),
                path.display()
            ));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > limit {
            return Err(format!(
                "stemcell image {}: {} is larger than {limit} bytes",
                image.display(),
                path.display()
            ));
        }
        let destination = into.join(name);
        let mut out = File::create(&destination)
            .map_err(|error| format!("cannot write {}: {error}", destination.display()))?;
        io::copy(&mut (&mut entry).take(limit), &mut out)
            .map_err(|error| unreadable(image, &error))?;
        let mode = if name == AGENT_FILE { 0o755 } else { 0o644 };
        fs::set_permissions(&destination, fs::Permissions::from_mode(mode))
            .map_err(|error| format!("cannot chmod {}: {error}", destination.display()))?;
        *found = true;
    }
    if !found_agent {
        return Err(format!(
            "stemcell image {} has no agent ({AGENT_PATH}): is it a local stemcell?",
            image.display()
        ));
    }
    Ok(())
}

fn unreadable(image: &Path, error: &io::Error) -> String {
    format!(
        "cannot read stemcell image {} (a gzipped tar): {error}",
        image.display()
    )
}

/// The path relative to the root, with `.` components dropped, or `None` when it is
/// absolute or has a `..`.
fn inside_root(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_root() {
        assert_eq!(
            inside_root(Path::new("./var/vcap/bosh/bin/bosh-agent")),
            Some(PathBuf::from(AGENT_PATH))
        );
        assert_eq!(inside_root(Path::new("var/../../etc")), None);
        assert_eq!(inside_root(Path::new("/etc/passwd")), None);
    }
}
