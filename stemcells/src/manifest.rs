//! What each output format is, and the `stemcell.MF` of a built stemcell in that format.
//!
//! Both formats carry the same `image`, a gzipped tar of the root filesystem:
//! `docker-rootfs` for the docker CPI (`docker import` takes it as it is) and `local` for the
//! local CPI (a VM is a directory plus an agent process on the host).

use std::fmt;
use std::str::FromStr;

use director_core::stemcell::StemcellManifest;
use serde_json::{Map, Value};

/// The agent API version of the stemcells we build: settings come without a registry.
pub const API_VERSION: u64 = 3;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// For the docker CPI.
    DockerRootfs,
    /// For the local CPI.
    Local,
}

impl Format {
    /// Every format, in the order they are built.
    pub const ALL: [Format; 2] = [Format::DockerRootfs, Format::Local];

    /// The name in `stemcell_formats` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::DockerRootfs => "docker-rootfs",
            Format::Local => "local",
        }
    }

    /// The infrastructure, as BOSH names it in stemcell names and cloud properties.
    pub fn infrastructure(self) -> &'static str {
        match self {
            Format::DockerRootfs => "docker",
            Format::Local => "local",
        }
    }

    /// The stemcell name for an operating system: `bosh-docker-debian-bookworm`.
    pub fn stemcell_name(self, operating_system: &str) -> String {
        format!("bosh-{}-{operating_system}", self.infrastructure())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.as_str() == text)
            .ok_or_else(|| format!("unknown format '{text}' (expected docker-rootfs or local)"))
    }
}

/// What a stemcell is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// `debian-bookworm`.
    pub operating_system: String,
    /// `12.8.20261126`.
    pub version: String,
    /// Lowercase hex SHA-256 of `image`.
    pub image_sha256: String,
    /// Debian's name for the architecture (`amd64`, `arm64`).
    pub architecture: String,
}

/// The `stemcell.MF` of the stemcell in `format`.
pub fn stemcell_manifest(format: Format, built: &Built) -> StemcellManifest {
    let name = format.stemcell_name(&built.operating_system);
    let (os_distro, _) = built
        .operating_system
        .split_once('-')
        .unwrap_or((&built.operating_system, ""));
    let mut cloud_properties = Map::new();
    for (key, value) in [
        ("name", name.as_str()),
        ("version", built.version.as_str()),
        ("infrastructure", format.infrastructure()),
        ("image_format", format.as_str()),
        ("os_type", "linux"),
        ("os_distro", os_distro),
        ("architecture", built.architecture.as_str()),
    ] {
        cloud_properties.insert(key.to_string(), Value::from(value));
    }
    StemcellManifest {
        name,
        version: built.version.clone(),
        bosh_protocol: None,
        api_version: API_VERSION,
        sha1: format!("sha256:{}", built.image_sha256),
        operating_system: built.operating_system.clone(),
        stemcell_formats: vec![format.as_str().to_string()],
        cloud_properties,
    }
}

/// The file name of a stemcell tarball: `bosh-docker-debian-bookworm-12.8.20261126.tgz`.
pub fn tarball_name(manifest: &StemcellManifest) -> String {
    format!("{}-{}.tgz", manifest.name, manifest.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> Built {
        Built {
            operating_system: "debian-bookworm".into(),
            version: "12.8.20261126".into(),
            image_sha256: "ab".repeat(32),
            architecture: "amd64".into(),
        }
    }

    #[test]
    fn docker_rootfs_stemcell_manifest() {
        let manifest = stemcell_manifest(Format::DockerRootfs, &built());
        assert_eq!(
            manifest.to_yaml(),
            format!(
                "name: bosh-docker-debian-bookworm\n\
                 version: 12.8.20261126\n\
                 api_version: 3\n\
                 sha1: sha256:{}\n\
                 operating_system: debian-bookworm\n\
                 stemcell_formats:\n\
                 - docker-rootfs\n\
                 cloud_properties:\n  \
                 name: bosh-docker-debian-bookworm\n  \
                 version: 12.8.20261126\n  \
                 infrastructure: docker\n  \
                 image_format: docker-rootfs\n  \
                 os_type: linux\n  \
                 os_distro: debian\n  \
                 architecture: amd64\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            tarball_name(&manifest),
            "bosh-docker-debian-bookworm-12.8.20261126.tgz"
        );
    }

    #[test]
    fn local_stemcell_manifest_reads_back() {
        let manifest = stemcell_manifest(Format::Local, &built());
        assert_eq!(manifest.name, "bosh-local-debian-bookworm");
        assert_eq!(manifest.stemcell_formats, ["local"]);
        assert_eq!(manifest.cloud_properties["infrastructure"], "local");
        let (back, warnings) = StemcellManifest::parse(&manifest.to_yaml(), "stemcell.MF").unwrap();
        assert_eq!(back, manifest);
        assert!(warnings.is_empty());
    }

    #[test]
    fn formats_parse_from_their_names() {
        assert_eq!("local".parse(), Ok(Format::Local));
        assert_eq!("docker-rootfs".parse(), Ok(Format::DockerRootfs));
        assert_eq!(
            "vsphere".parse::<Format>(),
            Err("unknown format 'vsphere' (expected docker-rootfs or local)".to_string())
        );
    }
}
