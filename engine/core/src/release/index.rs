//! The records a release directory keeps of the releases made from it, in BOSH's layout:
//! `dev_releases/<name>/index.yml` (`builds: {<key>: {version: 0+dev.1}}`,
//! `format-version: "2"`) with one `<name>-<version>.yml` manifest per version, the same
//! under `releases/<name>/` for final releases, and `.final_builds/{jobs,packages,license}/
//! <name>/index.yml` for the fingerprints that went into a final release.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::manifest::ReleaseManifest;
use super::version::Version;
use super::{ReleaseError, display_path, write_atomic};
use crate::manifest::decode::Cx;
use crate::yaml::{self, Map, Node, Span, Value, YamlPath};

/// Dev or final releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// `dev_releases/`.
    Dev,
    /// `releases/`.
    Final,
}

impl IndexKind {
    fn folder(self) -> &'static str {
        match self {
            IndexKind::Dev => "dev_releases",
            IndexKind::Final => "releases",
        }
    }
}

/// The index of one release name's dev or final versions.
#[derive(Clone, Debug)]
pub struct ReleaseIndex {
    dir: PathBuf,
    name: String,
    builds: BTreeMap<String, String>,
}

fn text(value: &str, span: &Span) -> Node {
    Node::string(value, span.clone())
}

fn map(entries: Vec<(String, Node)>, span: &Span) -> Node {
    let mut map = Map::new();
    for (key, value) in entries {
        map.insert(text(&key, span), value);
    }
    Node::new(Value::Map(map), span.clone())
}

/// Reads `builds: {<key>: {version: …}}` of an index file.
fn read_builds(path: &Path) -> Result<BTreeMap<String, Node>, ReleaseError> {
    let shown = display_path(path);
    let content = match fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(ReleaseError::io(path, source)),
    };
    let node = yaml::parse(&content, &shown)?;
    let mut cx = Cx::default();
    let mut builds = BTreeMap::new();
    if let Some(top) = cx.map(&node, &YamlPath::root(), "a release index") {
        if let Some(entries) = top
            .get("builds")
            .and_then(|b| cx.map(b, &top.at("builds"), "builds"))
        {
            for (key, value) in entries.map.iter() {
                if let Some(key) = cx.text(key, &top.at("builds")) {
                    builds.insert(key.value, value.clone());
                }
            }
        }
    }
    if cx.diagnostics.has_errors() {
        return Err(ReleaseError::Invalid(cx.diagnostics));
    }
    Ok(builds)
}

fn write_builds(path: &Path, builds: Vec<(String, Node)>) -> Result<(), ReleaseError> {
    let span = Span::synthetic("index.yml");
    let document = map(
        vec![
            ("builds".to_string(), map(builds, &span)),
            ("format-version".to_string(), text("2", &span)),
        ],
        &span,
    );
    let mut out = String::new();
    yaml::emit_to(&document, &mut out, false);
    write_atomic(path, out.as_bytes())
}

impl ReleaseIndex {
    /// Loads the index of `name` in `release_dir` (empty when there is none yet).
    pub fn load(
        release_dir: &Path,
        kind: IndexKind,
        name: &str,
    ) -> Result<ReleaseIndex, ReleaseError> {
        let dir = release_dir.join(kind.folder()).join(name);
        let mut cx = Cx::default();
        let mut builds = BTreeMap::new();
        for (key, entry) in read_builds(&dir.join("index.yml"))? {
            let at = YamlPath::root().key("builds").key(&key);
            if let Some(entry) = cx.map(&entry, &at, "a build") {
                if let Some(version) = entry.req_text(&mut cx, "version", "a release version") {
                    if Version::parse(&version.value).is_none() {
                        cx.error(
                            &version.span,
                            &version.path,
                            format!("'{}' is not a release version", version.value),
                        );
                    }
                    builds.insert(key, version.value);
                }
            }
        }
        if cx.diagnostics.has_errors() {
            return Err(ReleaseError::Invalid(cx.diagnostics));
        }
        Ok(ReleaseIndex {
            dir,
            name: name.to_string(),
            builds,
        })
    }

    /// The highest version.
    pub fn latest(&self) -> Option<Version> {
        self.builds.values().filter_map(|v| Version::parse(v)).max()
    }

    /// Whether a version equal to `version` is recorded.
    pub fn contains(&self, version: &Version) -> bool {
        self.builds
            .values()
            .filter_map(|v| Version::parse(v))
            .any(|v| &v == version)
    }

    /// `<dir>/<name>-<version>.yml`.
    pub fn manifest_path(&self, version: &str) -> PathBuf {
        self.dir.join(format!("{}-{version}.yml", self.name))
    }

    /// `<dir>/<name>-<version>.tgz`, where the tarball goes unless `--tarball` says otherwise.
    pub fn tarball_path(&self, version: &str) -> PathBuf {
        self.dir.join(format!("{}-{version}.tgz", self.name))
    }

    /// The manifest recorded for `version`.
    pub fn read_manifest(&self, version: &str) -> Result<ReleaseManifest, ReleaseError> {
        let path = self.manifest_path(version);
        let text = fs::read_to_string(&path).map_err(|e| ReleaseError::io(&path, e))?;
        let (manifest, _) = ReleaseManifest::parse(&text, &display_path(&path))?;
        Ok(manifest)
    }

    /// Records a new version: its manifest file, then the index entry under a fresh key.
    pub fn add(&mut self, manifest: &ReleaseManifest) -> Result<(), ReleaseError> {
        fs::create_dir_all(&self.dir).map_err(|e| ReleaseError::io(&self.dir, e))?;
        write_atomic(
            &self.manifest_path(&manifest.version),
            manifest.to_yaml().as_bytes(),
        )?;
        self.builds.insert(new_key()?, manifest.version.clone());
        let span = Span::synthetic("index.yml");
        let builds = self
            .builds
            .iter()
            .map(|(key, version)| {
                (
                    key.clone(),
                    map(vec![("version".to_string(), text(version, &span))], &span),
                )
            })
            .collect();
        write_builds(&self.dir.join("index.yml"), builds)
    }
}

/// Records that a job, package or license with `fingerprint` went into a final release
/// (`.final_builds/<kind>/<name>/index.yml`); an existing entry is left as it is.
pub fn record_final_build(
    release_dir: &Path,
    kind: &str,
    name: &str,
    fingerprint: &str,
    sha1: &str,
) -> Result<(), ReleaseError> {
    let dir = release_dir.join(".final_builds").join(kind).join(name);
    let path = dir.join("index.yml");
    let mut builds = read_builds(&path)?;
    if builds.contains_key(fingerprint) {
        return Ok(());
    }
    let span = Span::synthetic("index.yml");
    builds.insert(
        fingerprint.to_string(),
        map(
            vec![
                ("version".to_string(), text(fingerprint, &span)),
                ("sha1".to_string(), text(sha1, &span)),
            ],
            &span,
        ),
    );
    fs::create_dir_all(&dir).map_err(|e| ReleaseError::io(&dir, e))?;
    write_builds(&path, builds.into_iter().collect())
}

/// A random (version 4) UUID, the key bosh-cli gives index entries.
fn new_key() -> Result<String, ReleaseError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)
        .map_err(|e| ReleaseError::Other(format!("cannot generate an index key: {e}")))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = super::digest::hex(&bytes);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> ReleaseManifest {
        ReleaseManifest {
            name: "hello".into(),
            version: version.into(),
            commit_hash: "abc".into(),
            uncommitted_changes: false,
            jobs: vec![],
            packages: vec![],
            license: None,
        }
    }

    #[test]
    fn records_versions_like_bosh() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ReleaseIndex::load(dir.path(), IndexKind::Dev, "hello").unwrap();
        assert!(index.latest().is_none());
        index.add(&manifest("0+dev.1")).unwrap();
        index.add(&manifest("0+dev.2")).unwrap();
        let again = ReleaseIndex::load(dir.path(), IndexKind::Dev, "hello").unwrap();
        assert_eq!(again.latest().unwrap().as_str(), "0+dev.2");
        assert!(again.contains(&Version::parse("0+dev.1").unwrap()));
        assert_eq!(again.read_manifest("0+dev.1").unwrap(), manifest("0+dev.1"));
        let text = fs::read_to_string(dir.path().join("dev_releases/hello/index.yml")).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.len() == 2 + 36 + 1), "{text}");
        assert!(text.ends_with("format-version: \"2\"\n"), "{text}");
    }

    #[test]
    fn final_builds_keep_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        record_final_build(dir.path(), "jobs", "web", "ff", "sha256:aa").unwrap();
        record_final_build(dir.path(), "jobs", "web", "ff", "sha256:bb").unwrap();
        let text = fs::read_to_string(dir.path().join(".final_builds/jobs/web/index.yml")).unwrap();
        assert_eq!(
            text,
            "builds:\n  ff:\n    version: ff\n    sha1: sha256:aa\nformat-version: \"2\"\n"
        );
    }
}
