//! Agent-only stemcells in the `local` format: what the local CPI takes from a stemcell is
//! its agent (`var/vcap/bosh/bin/bosh-agent`) and `agent.json`, since local VMs run on the
//! host's own OS. Building one takes a second, so `deploy` makes one on the fly when a
//! manifest's `stemcells[].url` names a stemcell recipe directory (`file://stemcells/<os>`),
//! as it creates releases from `releases[].url` directories.
//!
//! The tarball is reproducible: the same agent and recipe make the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Map as JsonMap;
use sha2::{Digest, Sha256};

use super::manifest::StemcellManifest;

fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &str,
    mode: u32,
    content: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, path, content)
}

fn gzipped_tar(entries: &[(&str, u32, &[u8])]) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, mode, content) in entries {
        append(&mut builder, path, *mode, content)?;
    }
    builder.into_inner()?.finish()
}

/// What to build.
#[derive(Clone, Debug)]
pub struct AgentStemcell {
    /// The agent executable.
    pub agent: PathBuf,
    /// `agent.json` to put beside it, if any.
    pub agent_json: Option<PathBuf>,
    /// Operating system name (`debian-bookworm`).
    pub os: String,
    /// Version.
    pub version: String,
}

impl AgentStemcell {
    /// The stemcell's name: `bosh-local-<os>`.
    pub fn name(&self) -> String {
        format!("bosh-local-{}", self.os)
    }

    /// Writes the stemcell tarball to `out` (atomically) and returns its manifest.
    pub fn write(&self, out: &Path) -> Result<StemcellManifest, LocalStemcellError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| LocalStemcellError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let agent = read(&self.agent)?;
        let config = match &self.agent_json {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let mut entries: Vec<(&str, u32, &[u8])> =
            vec![("var/vcap/bosh/bin/bosh-agent", 0o755, &agent)];
        if let Some(config) = &config {
            entries.push(("var/vcap/bosh/agent.json", 0o644, config));
        }
        let image = gzipped_tar(&entries).map_err(LocalStemcellError::Pack)?;
        let digest: String = Sha256::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let manifest = StemcellManifest {
            name: self.name(),
            version: self.version.clone(),
            bosh_protocol: None,
            api_version: 3,
            sha1: format!("sha256:{digest}"),
            operating_system: self.os.clone(),
            stemcell_formats: vec!["local".to_string()],
            cloud_properties: JsonMap::new(),
        };
        let text = manifest.to_yaml();
        let tarball = gzipped_tar(&[
            ("stemcell.MF", 0o644, text.as_bytes()),
            ("image", 0o644, &image),
        ])
        .map_err(LocalStemcellError::Pack)?;
        secrets::write_atomic(out, &tarball, 0o644).map_err(|source| {
            LocalStemcellError::Write {
                path: out.to_path_buf(),
                source,
            }
        })?;
        Ok(manifest)
    }
}

/// Why a `local` stemcell could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LocalStemcellError {
    /// The agent or its configuration could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image or the tarball could not be packed.
    #[error("cannot pack the stemcell: {0}")]
    Pack(#[source] std::io::Error),
    /// The tarball could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_stemcell_reads_back_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("bosh-agent");
        std::fs::write(&agent, b"#!/bin/sh\necho agent\n").unwrap();
        let build = AgentStemcell {
            agent,
            agent_json: None,
            os: "debian-bookworm".into(),
            version: "0.17".into(),
        };
        let out = dir.path().join("s.tgz");
        let manifest = build.write(&out).unwrap();
        assert_eq!(manifest.name, "bosh-local-debian-bookworm");
        let first = std::fs::read(&out).unwrap();
        build.write(&out).unwrap();
        assert_eq!(first, std::fs::read(&out).unwrap());
        let archive =
            super::super::archive::read_stemcell(&out, &crate::archive::Limits::default()).unwrap();
        assert_eq!(archive.manifest.version, "0.17");
        assert_eq!(archive.manifest.stemcell_formats, vec!["local"]);
    }
}
