//! `config/blobs.yml` and `blobs/`: large files a release tracks by size and digest instead
//! of committing them (`cli:releasedir/fs_blobs_dir.go`). An entry is
//! `"<path>": {size: N, object_id: <id>, sha: "sha256:<hex>"}`; `object_id` is set once the
//! blob is uploaded to the release's blobstore. Writes go through a temporary file and a
//! rename, so the index and the blob are either the old ones or the new ones.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::digest::{ExpectedDigest, hex};
use super::spec::{FinalConfig, is_relative_inside};
use super::{ReleaseError, display_path, write_atomic};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::manifest::decode::Cx;
use crate::yaml::{self, Map, Node, Span, Value, YamlPath};

/// One tracked blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blob {
    /// Its path under `blobs/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Digest string (`sha256:<hex>`, or bare SHA-1 hex in older releases).
    pub sha: String,
    /// Blobstore id, once uploaded.
    pub object_id: Option<String>,
}

const INDEX: &str = "config/blobs.yml";

/// The blobs of `config/blobs.yml`, sorted by path (none when the file does not exist).
pub fn read_blobs(release_dir: &Path) -> Result<Vec<Blob>, ReleaseError> {
    let path = release_dir.join(INDEX);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReleaseError::io(&path, e)),
    };
    let node = yaml::parse(&text, &display_path(&path))?;
    let mut cx = Cx::default();
    let mut blobs = Vec::new();
    if !node.is_null() {
        if let Some(entries) = cx.map(&node, &YamlPath::root(), "blobs by path") {
            for (key, value) in entries.map.iter() {
                let Some(blob_path) = cx.string(key, &YamlPath::root()) else {
                    continue;
                };
                let at = YamlPath::root().key(&blob_path.value);
                if !is_relative_inside(&blob_path.value) {
                    cx.error(
                        &key.span,
                        &at,
                        format!(
                            "blob path '{}' must be relative, without '..'",
                            blob_path.value
                        ),
                    );
                    continue;
                }
                let Some(fields) = cx.map(value, &at, "a blob") else {
                    continue;
                };
                fields.unknown_keys(&mut cx, &["size", "object_id", "sha"]);
                let size = fields.req_uint(&mut cx, "size", "the blob's size in bytes");
                let sha = fields.req_string(&mut cx, "sha", "the blob's digest");
                let object_id = fields.opt_string(&mut cx, "object_id").map(|s| s.value);
                if let Some(sha) = &sha {
                    if ExpectedDigest::parse(&sha.value).is_none() {
                        cx.error(
                            &sha.span,
                            &sha.path,
                            format!("'{}' is not a sha1, sha256 or sha512 digest", sha.value),
                        );
                    }
                }
                if let (Some(size), Some(sha)) = (size, sha) {
                    blobs.push(Blob {
                        path: blob_path.value,
                        size: size.value,
                        sha: sha.value,
                        object_id,
                    });
                }
            }
        }
    }
    if cx.diagnostics.has_errors() {
        return Err(ReleaseError::Invalid(cx.diagnostics));
    }
    blobs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(blobs)
}

fn write_blobs(release_dir: &Path, blobs: &[Blob]) -> Result<(), ReleaseError> {
    let span = Span::synthetic(INDEX);
    let text = |s: &str| Node::string(s, span.clone());
    let mut index = Map::new();
    for blob in blobs {
        let mut fields = Map::new();
        fields.insert(
            text("size"),
            Node::new(
                Value::Int(i64::try_from(blob.size).unwrap_or(i64::MAX)),
                span.clone(),
            ),
        );
        if let Some(id) = &blob.object_id {
            fields.insert(text("object_id"), text(id));
        }
        fields.insert(text("sha"), text(&blob.sha));
        index.insert(
            text(&blob.path),
            Node::new(Value::Map(fields), span.clone()),
        );
    }
    let mut out = String::new();
    yaml::emit_to(&Node::new(Value::Map(index), span.clone()), &mut out, false);
    write_atomic(&release_dir.join(INDEX), out.as_bytes())
}

/// Copies `source` to `blobs/<name>` and records its size and SHA-256 in
/// `config/blobs.yml`. Re-adding identical content keeps the upload record; new content
/// drops it (it has to be uploaded again).
pub fn add_blob(release_dir: &Path, source: &Path, name: &str) -> Result<Blob, ReleaseError> {
    let name = name.trim_start_matches("./");
    if !is_relative_inside(name) || name.ends_with('/') {
        return Err(ReleaseError::Other(format!(
            "blob name '{name}' must be a relative path under blobs/, without '..'"
        )));
    }
    if !release_dir.join("config").is_dir() {
        return Err(ReleaseError::Other(format!(
            "{} is not a release directory (it has no config/ folder)",
            display_path(release_dir)
        )));
    }
    let mut blobs = read_blobs(release_dir)?;
    let destination = release_dir.join("blobs").join(name);
    let mut input = fs::File::open(source).map_err(|e| ReleaseError::io(source, e))?;
    let mut size = 0u64;
    let mut hasher = Sha256::new();
    let mut staged = secrets::AtomicFile::create(&destination, 0o644)
        .map_err(|e| ReleaseError::io(&destination, e))?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = input
            .read(&mut buffer)
            .map_err(|e| ReleaseError::io(source, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        staged
            .file()
            .write_all(&buffer[..n])
            .map_err(|e| ReleaseError::io(&destination, e))?;
        size += n as u64;
    }
    staged
        .commit()
        .map_err(|e| ReleaseError::io(&destination, e))?;
    let sha = format!("sha256:{}", hex(&hasher.finalize()));
    let previous = blobs.iter().position(|b| b.path == name);
    let object_id = previous
        .map(|i| &blobs[i])
        .filter(|b| b.sha == sha)
        .and_then(|b| b.object_id.clone());
    let blob = Blob {
        path: name.to_string(),
        size,
        sha,
        object_id,
    };
    match previous {
        Some(i) => blobs[i] = blob.clone(),
        None => blobs.push(blob.clone()),
    }
    blobs.sort_by(|a, b| a.path.cmp(&b.path));
    write_blobs(release_dir, &blobs)?;
    Ok(blob)
}

/// Whether each tracked blob is in `blobs/` with its recorded digest; blobs missing there
/// but uploaded to a `local` blobstore are copied from it first. One diagnostic per problem.
pub fn check_local(release_dir: &Path, config: &FinalConfig) -> Diagnostics {
    let mut diagnostics = Diagnostics::new();
    let blobs = match read_blobs(release_dir) {
        Ok(blobs) => blobs,
        Err(ReleaseError::Invalid(problems)) => return problems,
        Err(e) => {
            diagnostics.push(Diagnostic::general(e.to_string()));
            return diagnostics;
        }
    };
    for blob in blobs {
        let local = release_dir.join("blobs").join(&blob.path);
        if !local.exists() {
            if let Err(message) = fetch_local(release_dir, config, &blob, &local) {
                diagnostics.push(Diagnostic::general(message));
                continue;
            }
        }
        let Some(expected) = ExpectedDigest::parse(&blob.sha) else {
            continue;
        };
        let actual = fs::File::open(&local).and_then(|mut f| expected.compute(&mut f));
        match actual {
            Ok(actual) if actual == expected.as_string() => {}
            Ok(actual) => diagnostics.push(Diagnostic::general(format!(
                "{} has digest {actual}, but {INDEX} says {}",
                display_path(&local),
                blob.sha
            ))),
            Err(e) => diagnostics.push(Diagnostic::general(format!(
                "cannot read {}: {e}",
                display_path(&local)
            ))),
        }
    }
    diagnostics
}

/// Copies an uploaded blob from a `local` blobstore (`blobstore_path/<object_id>`).
fn fetch_local(
    release_dir: &Path,
    config: &FinalConfig,
    blob: &Blob,
    local: &Path,
) -> Result<(), String> {
    let missing = format!(
        "blob '{}' is tracked in {INDEX} but {} does not exist",
        blob.path,
        display_path(local)
    );
    let (Some(object_id), Some("local"), Some(store)) = (
        &blob.object_id,
        config.blobstore_provider.as_deref(),
        &config.blobstore_path,
    ) else {
        return Err(format!("{missing} (and it was never uploaded)"));
    };
    if !super::valid_name(object_id) {
        return Err(format!(
            "{missing} (its object_id '{object_id}' is not a file name)"
        ));
    }
    let store = PathBuf::from(store);
    let store = if store.is_absolute() {
        store
    } else {
        release_dir.join(store)
    };
    let from = store.join(object_id);
    let copy = || -> io::Result<()> {
        if let Some(parent) = local.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut input = fs::File::open(&from)?;
        super::write_atomic_with(local, |file| io::copy(&mut input, file).map(|_| ()))
            .map_err(|e| io::Error::other(e.to_string()))
    };
    copy().map_err(|e| {
        format!(
            "{missing}, and it cannot be copied from the local blobstore ({}): {e}",
            display_path(&from)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_records_size_and_digest_and_keeps_uploads_of_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("config")).unwrap();
        let file = d.join("input");
        fs::write(&file, "data").unwrap();
        let blob = add_blob(d, &file, "lib/data.tgz").unwrap();
        assert_eq!(blob.size, 4);
        // printf data | sha256sum
        assert_eq!(
            blob.sha,
            "sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
        );
        assert_eq!(
            fs::read_to_string(d.join("blobs/lib/data.tgz")).unwrap(),
            "data"
        );
        let text = fs::read_to_string(d.join(INDEX)).unwrap();
        assert_eq!(
            text,
            "lib/data.tgz:\n  size: 4\n  sha: sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7\n"
        );
        // Pretend it was uploaded; adding the same bytes keeps the id, new bytes drop it.
        fs::write(
            d.join(INDEX),
            text.replace("  size: 4\n", "  size: 4\n  object_id: abc\n"),
        )
        .unwrap();
        add_blob(d, &file, "lib/data.tgz").unwrap();
        assert_eq!(read_blobs(d).unwrap()[0].object_id.as_deref(), Some("abc"));
        fs::write(&file, "other").unwrap();
        add_blob(d, &file, "lib/data.tgz").unwrap();
        assert_eq!(read_blobs(d).unwrap()[0].object_id, None);
        assert!(add_blob(d, &file, "../escape").is_err());
        let leftovers: Vec<_> = fs::read_dir(d.join("blobs/lib"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["data.tgz"]);
    }

    #[test]
    fn local_blobs_must_match_their_digest_and_missing_ones_come_from_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("config")).unwrap();
        let file = d.join("input");
        fs::write(&file, "data").unwrap();
        add_blob(d, &file, "a").unwrap();
        assert!(check_local(d, &FinalConfig::default()).is_empty());
        fs::write(d.join("blobs/a"), "tampered").unwrap();
        let problems = check_local(d, &FinalConfig::default());
        assert!(
            problems.to_string().contains("but config/blobs.yml says"),
            "{problems}"
        );
        // Uploaded to a local store, missing locally: copied back.
        fs::create_dir_all(d.join("store")).unwrap();
        fs::write(d.join("store/id-1"), "data").unwrap();
        fs::remove_file(d.join("blobs/a")).unwrap();
        let text = fs::read_to_string(d.join(INDEX)).unwrap();
        fs::write(
            d.join(INDEX),
            text.replace("  size: 4\n", "  size: 4\n  object_id: id-1\n"),
        )
        .unwrap();
        let config = FinalConfig {
            blobstore_provider: Some("local".into()),
            blobstore_path: Some("store".into()),
            ..FinalConfig::default()
        };
        assert!(check_local(d, &config).is_empty());
        assert_eq!(fs::read_to_string(d.join("blobs/a")).unwrap(), "data");
    }
}
