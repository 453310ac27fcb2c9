//! The blobstore: release jobs and packages, compiled packages, stemcell images and rendered
//! templates, addressed by the SHA-256 of their content.
//!
//! Backends are `object_store` stores: a local directory (the default) or, with the `s3`
//! feature, an S3-compatible bucket. Every write streams the content into a staging object
//! (`staging/<uuid>`) while hashing it, then renames it to `blobs/<sha256>` only when the
//! whole content arrived and, if the caller said what to expect, the digest matched. So an
//! interrupted or corrupt upload never leaves a blob under a real name; stale staging objects
//! are removed by [`Blobstore::clean_staging`] at start-up. Reads verify the digest as they
//! stream, so a blob damaged at rest is an error, never silently wrong data.
//!
//! Agents fetch blobs over HTTP from the director with URLs signed by HMAC-SHA-256 and an
//! expiry (`GET /blobs/<id>?exp=<unix seconds>&sig=<hex>`, see [`Blobstore::signed_path`]
//! and [`Blobstore::verify_signature`]). With an S3 backend the director instead hands out
//! the bucket's own presigned URLs (`Blobstore::presigned_url`), so blob traffic goes to
//! S3 directly and the director never proxies it.

pub mod slots;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use hmac::{Hmac, Mac};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetResultPayload, ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;

/// A blob id: the lowercase hex SHA-256 of the content.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// Parses a 64-character lowercase hex digest (an optional `sha256:` prefix is allowed).
    pub fn parse(text: &str) -> Result<BlobId, BlobstoreError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(BlobId(hex.to_string()))
        } else {
            Err(BlobstoreError::InvalidId(text.to_string()))
        }
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest in BOSH's string form, `sha256:<hex>`.
    pub fn digest_string(&self) -> String {
        format!("sha256:{}", self.0)
    }

    fn from_hasher(hasher: Sha256) -> BlobId {
        BlobId(hex(&hasher.finalize()))
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Blobstore failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobstoreError {
    /// Not a SHA-256 hex digest.
    #[error("invalid blob id {0:?}: expected a sha256 hex digest")]
    InvalidId(String),
    /// The content did not hash to what the caller expected.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the caller said.
        expected: String,
        /// What the content hashed to.
        actual: String,
    },
    /// The blob is not in the store.
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// The blob's content no longer hashes to its id.
    #[error("blob {0} is corrupt: its content does not match its sha256")]
    Corrupt(BlobId),
    /// The content is larger than allowed.
    #[error("content is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The backend failed.
    #[error("blobstore {location}: {source}")]
    Backend {
        /// Which store.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// Local IO failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error("blobstore configuration: {0}")]
    Config(String),
}

/// Where blobs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobstoreConfig {
    /// A directory on the director's disk.
    Local {
        /// The directory.
        path: PathBuf,
    },
    /// An S3-compatible bucket (needs the `s3` feature).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Endpoint URL for S3-compatible stores (MinIO, Ceph…); `None` for AWS.
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Access key id.
        access_key_id: secrets::Redacted<String>,
        /// Secret access key.
        secret_access_key: secrets::Redacted<String>,
        /// Use path-style URLs (`endpoint/bucket/key`), as most S3-compatible stores want.
        path_style: bool,
    },
}

/// What a successful write produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    /// The content's id.
    pub id: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// False when a blob with the same content was already stored (nothing was written).
    pub created: bool,
}

/// Content staged and hashed, not yet under its name.
struct Staged {
    staging: StorePath,
    id: BlobId,
    size: u64,
}

/// [`Blobstore::put_recorded`] failed: storing, or recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordedError<E> {
    /// The content could not be stored.
    #[error(transparent)]
    Store(#[from] BlobstoreError),
    /// The record failed; nothing was stored.
    #[error(transparent)]
    Record(E),
}

/// A blob opened for reading ([`Blobstore::get_stream`]).
pub struct BlobStream {
    /// Its size in bytes, as the store has it.
    pub size: u64,
    /// Its content, chunk by chunk; the stream ends with [`BlobstoreError::Corrupt`] when the
    /// content does not hash to the blob's id.
    pub chunks: BoxStream<'static, Result<Bytes, BlobstoreError>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// `chunks` passed through while they are hashed; after the last one, an error if they did
/// not hash to `id`. The first error ends the stream.
fn verified(
    chunks: BoxStream<'static, Result<Bytes, BlobstoreError>>,
    id: BlobId,
) -> BoxStream<'static, Result<Bytes, BlobstoreError>> {
    futures::stream::unfold(
        (chunks, Some(Sha256::new())),
        move |(mut chunks, hasher)| {
            let id = id.clone();
            async move {
                let mut hasher = hasher?;
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (chunks, Some(hasher))))
                    }
                    Some(Err(error)) => Some((Err(error), (chunks, None))),
                    None if BlobId::from_hasher(hasher) == id => None,
                    None => Some((Err(BlobstoreError::Corrupt(id)), (chunks, None))),
                }
            }
        },
    )
    .boxed()
}

/// The blobstore.
#[derive(Clone)]
pub struct Blobstore {
    store: Arc<dyn ObjectStore>,
    location: String,
    signing_key: Arc<Vec<u8>>,
    /// The directory of a local blobstore, for [`Blobstore::adopt_file`]'s rename.
    local_root: Option<PathBuf>,
    #[cfg(feature = "s3")]
    signer: Option<Arc<object_store::aws::AmazonS3>>,
}

const CHUNK: usize = 1 << 20;

/// The location only: the signing key (an HMAC key) never prints.
impl std::fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobstore")
            .field("location", &self.location)
            .field("signing_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Blobstore {
    /// Opens a blobstore; `signing_key` signs the URLs agents use (keep it secret, keep it
    /// stable across restarts so URLs handed out stay valid until they expire).
    pub fn open(
        config: &BlobstoreConfig,
        signing_key: Vec<u8>,
    ) -> Result<Blobstore, BlobstoreError> {
        match config {
            BlobstoreConfig::Local { path } => {
                std::fs::create_dir_all(path).map_err(|source| BlobstoreError::Io {
                    context: format!("creating blobstore directory {}", path.display()),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(path).map_err(|source| {
                    BlobstoreError::Backend {
                        location: path.display().to_string(),
                        source,
                    }
                })?;
                Ok(Blobstore {
                    store: Arc::new(store),
                    location: path.display().to_string(),
                    signing_key: Arc::new(signing_key),
                    local_root: Some(path.clone()),
                    #[cfg(feature = "s3")]
                    signer: None,
                })
            }
            #[cfg(feature = "s3")]
            BlobstoreConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                path_style,
            } => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id.expose())
                    .with_secret_access_key(secret_access_key.expose())
                    .with_virtual_hosted_style_request(!path_style);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let location = format!("s3://{bucket}");
                let s3 = Arc::new(builder.build().map_err(|source| BlobstoreError::Backend {
                    location: location.clone(),
                    source,
                })?);
                Ok(Blobstore {
                    store: s3.clone(),
                    location,
                    signing_key: Arc::new(signing_key),
                    local_root: None,
                    signer: Some(s3),
                })
            }
            #[cfg(not(feature = "s3"))]
            BlobstoreConfig::S3 { .. } => Err(BlobstoreError::Config(
                "this director was built without S3 support (build with --features s3)".to_string(),
            )),
        }
    }

    /// Where the blobs are, for messages (`/var/lib/director/blobs`, `s3://bucket`).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn blob_path(id: &BlobId) -> StorePath {
        StorePath::from(format!("blobs/{}", id.as_str()))
    }

    fn backend(&self, source: object_store::Error) -> BlobstoreError {
        match source {
            object_store::Error::NotFound { .. } => BlobstoreError::Backend {
                location: self.location.clone(),
                source,
            },
            other => BlobstoreError::Backend {
                location: self.location.clone(),
                source: other,
            },
        }
    }

    /// Streams `reader` into the store. With `expected`, content that does not hash to it is
    /// rejected and nothing is stored; `limit` bounds the size. Content already present is not
    /// written again (`created: false`).
    pub async fn put_reader(
        &self,
        reader: impl AsyncRead + Unpin,
        expected: Option<&BlobId>,
        limit: Option<u64>,
    ) -> Result<StoredBlob, BlobstoreError> {
        let staged = self.stage(reader, expected, limit).await?;
        self.publish(&staged.staging, staged.id, staged.size).await
    }

    /// Streams `reader` into a staging object, hashing it (see [`Blobstore::put_reader`]);
    /// the caller publishes it under its id ([`Blobstore::publish`]) or discards it.
    async fn stage(
        &self,
        mut reader: impl AsyncRead + Unpin,
        expected: Option<&BlobId>,
        limit: Option<u64>,
    ) -> Result<Staged, BlobstoreError> {
        let staging = StorePath::from(format!("staging/{}", uuid::Uuid::new_v4()));
        let mut writer = BufWriter::with_capacity(self.store.clone(), staging.clone(), 8 * CHUNK);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; CHUNK];
        let copied: Result<(), BlobstoreError> = async {
            loop {
                let n = reader
                    .read(&mut buffer)
                    .await
                    .map_err(|source| BlobstoreError::Io {
                        context: "reading the content to store".to_string(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if limit.is_some_and(|limit| size > limit) {
                    return Err(BlobstoreError::TooLarge {
                        limit: limit.unwrap_or_default(),
                    });
                }
                hasher.update(&buffer[..n]);
                writer
                    .write_all(&buffer[..n])
                    .await
                    .map_err(|source| BlobstoreError::Io {
                        context: format!("writing to {}", self.location),
                        source,
                    })?;
            }
            writer
                .shutdown()
                .await
                .map_err(|source| BlobstoreError::Io {
                    context: format!("finishing the write to {}", self.location),
                    source,
                })
        }
        .await;
        if let Err(error) = copied {
            let _ = writer.abort().await;
            let _ = self.store.delete(&staging).await;
            return Err(error);
        }
        let id = BlobId::from_hasher(hasher);
        if let Some(expected) = expected {
            if *expected != id {
                let _ = self.store.delete(&staging).await;
                return Err(BlobstoreError::DigestMismatch {
                    expected: expected.digest_string(),
                    actual: id.digest_string(),
                });
            }
        }
        Ok(Staged { staging, id, size })
    }

    /// Streams `reader` into the store for a holder that records the blob first: the
    /// content is staged and hashed, `record` is called with what was staged (it records the
    /// blob and whatever keeps it from clean-up), and only then is the content put under its
    /// name. So clean-up, which deletes a blob's content inside the transaction that forgets
    /// it, can never delete the content of a blob that `record` recorded (see
    /// `director_state::Blobs`). When `record` fails nothing is stored.
    pub async fn put_recorded<F, Fut, E>(
        &self,
        reader: impl AsyncRead + Unpin,
        expected: Option<&BlobId>,
        limit: Option<u64>,
        record: F,
    ) -> Result<StoredBlob, RecordedError<E>>
    where
        F: FnOnce(StoredBlob) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let staged = self.stage(reader, expected, limit).await?;
        let blob = StoredBlob {
            id: staged.id.clone(),
            size: staged.size,
            created: false,
        };
        if let Err(error) = record(blob).await {
            let _ = self.store.delete(&staged.staging).await;
            return Err(RecordedError::Record(error));
        }
        Ok(self
            .publish(&staged.staging, staged.id, staged.size)
            .await?)
    }

    /// Stores a file.
    pub async fn put_file(
        &self,
        path: &Path,
        expected: Option<&BlobId>,
    ) -> Result<StoredBlob, BlobstoreError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| BlobstoreError::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        self.put_reader(file, expected, None).await
    }

    /// Takes over a file whose SHA-256 the caller computed itself while writing it (an
    /// unpacked stemcell image): a local blobstore on the same filesystem renames it into
    /// place, which costs nothing for a gigabyte; otherwise it is copied (and hashed again).
    /// The file is gone afterwards either way.
    pub async fn adopt_file(&self, path: &Path, id: &BlobId) -> Result<StoredBlob, BlobstoreError> {
        if let Some(root) = &self.local_root {
            let size = tokio::fs::metadata(path)
                .await
                .map_err(|source| BlobstoreError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })?
                .len();
            let target = root.join("blobs").join(id.as_str());
            if tokio::fs::try_exists(&target).await.unwrap_or(false) {
                let _ = tokio::fs::remove_file(path).await;
                return Ok(StoredBlob {
                    id: id.clone(),
                    size,
                    created: false,
                });
            }
            let _ = tokio::fs::create_dir_all(root.join("blobs")).await;
            match tokio::fs::rename(path, &target).await {
                Ok(()) => {
                    return Ok(StoredBlob {
                        id: id.clone(),
                        size,
                        created: true,
                    });
                }
                // Another filesystem: copy below.
                Err(e) if e.raw_os_error() == Some(18) => {}
                Err(source) => {
                    return Err(BlobstoreError::Io {
                        context: format!("moving {} into the blobstore", path.display()),
                        source,
                    });
                }
            }
        }
        let stored = self.put_file(path, Some(id)).await;
        let _ = tokio::fs::remove_file(path).await;
        stored
    }

    /// Stores bytes held in memory.
    pub async fn put_bytes(&self, content: Bytes) -> Result<StoredBlob, BlobstoreError> {
        let id = BlobId::from_hasher(Sha256::new_with_prefix(&content));
        let size = content.len() as u64;
        if self.exists(&id).await? {
            return Ok(StoredBlob {
                id,
                size,
                created: false,
            });
        }
        let staging = StorePath::from(format!("staging/{}", uuid::Uuid::new_v4()));
        self.store
            .put(&staging, PutPayload::from_bytes(content))
            .await
            .map_err(|e| self.backend(e))?;
        self.publish(&staging, id, size).await
    }

    /// Moves a complete, verified staging object to its content address. Stores without an
    /// atomic rename-if-absent (S3) copy unless the blob is there already: both writers hold
    /// the same bytes, so a race between them is harmless.
    async fn publish(
        &self,
        staging: &StorePath,
        id: BlobId,
        size: u64,
    ) -> Result<StoredBlob, BlobstoreError> {
        let target = Self::blob_path(&id);
        let renamed = match self.store.rename_if_not_exists(staging, &target).await {
            Err(object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented) => {
                if self.exists(&id).await? {
                    Err(object_store::Error::AlreadyExists {
                        path: target.to_string(),
                        source: "already stored".into(),
                    })
                } else {
                    self.store.rename(staging, &target).await
                }
            }
            other => other,
        };
        match renamed {
            Ok(()) => Ok(StoredBlob {
                id,
                size,
                created: true,
            }),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let _ = self.store.delete(staging).await;
                Ok(StoredBlob {
                    id,
                    size,
                    created: false,
                })
            }
            Err(source) => {
                let _ = self.store.delete(staging).await;
                Err(self.backend(source))
            }
        }
    }

    /// Whether a blob is stored.
    pub async fn exists(&self, id: &BlobId) -> Result<bool, BlobstoreError> {
        match self.store.head(&Self::blob_path(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(self.backend(source)),
        }
    }

    /// The size of a stored blob.
    pub async fn size(&self, id: &BlobId) -> Result<u64, BlobstoreError> {
        match self.store.head(&Self::blob_path(id)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(BlobstoreError::NotFound(id.clone())),
            Err(source) => Err(self.backend(source)),
        }
    }

    /// Opens a blob for reading: its size and its content as a stream of chunks, verified as
    /// it goes. A blob whose content no longer hashes to its id ends its stream with
    /// [`BlobstoreError::Corrupt`] after the last chunk, so a reader that forwards the
    /// chunks (an HTTP response) must treat the content as lost when the stream fails. A
    /// local blob is read from its file in 1 MiB chunks; an S3 blob is the bucket's own
    /// response stream. Nothing holds more than one chunk in memory.
    pub async fn get_stream(&self, id: &BlobId) -> Result<BlobStream, BlobstoreError> {
        let result = match self.store.get(&Self::blob_path(id)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobstoreError::NotFound(id.clone()));
            }
            Err(source) => return Err(self.backend(source)),
        };
        let size = result.meta.size;
        let chunks: BoxStream<'static, Result<Bytes, BlobstoreError>> = match result.payload {
            GetResultPayload::File(file, _) => {
                let context = format!("reading blob {id} from {}", self.location);
                ReaderStream::with_capacity(tokio::fs::File::from_std(file), CHUNK)
                    .map(move |chunk| {
                        chunk.map_err(|source| BlobstoreError::Io {
                            context: context.clone(),
                            source,
                        })
                    })
                    .boxed()
            }
            GetResultPayload::Stream(stream) => {
                let location = self.location.clone();
                stream
                    .map(move |chunk| {
                        chunk.map_err(|source| BlobstoreError::Backend {
                            location: location.clone(),
                            source,
                        })
                    })
                    .boxed()
            }
        };
        Ok(BlobStream {
            size,
            chunks: verified(chunks, id.clone()),
        })
    }

    /// Streams a blob into `writer`, verifying its digest; on a mismatch the error comes after
    /// the bytes were written, so callers writing to a file must discard it (see
    /// [`Blobstore::get_to_file`]).
    pub async fn get_to_writer(
        &self,
        id: &BlobId,
        mut writer: impl AsyncWrite + Unpin,
    ) -> Result<u64, BlobstoreError> {
        let BlobStream { mut chunks, .. } = self.get_stream(id).await?;
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            writer
                .write_all(&chunk)
                .await
                .map_err(|source| BlobstoreError::Io {
                    context: format!("copying blob {id}"),
                    source,
                })?;
        }
        writer.flush().await.map_err(|source| BlobstoreError::Io {
            context: format!("copying blob {id}"),
            source,
        })?;
        Ok(size)
    }

    /// Copies a blob to a file (via a temporary file in the same directory, renamed only when
    /// the digest verified).
    pub async fn get_to_file(
        &self,
        id: &BlobId,
        destination: &Path,
    ) -> Result<u64, BlobstoreError> {
        let directory = destination.parent().unwrap_or(Path::new("."));
        let temporary = directory.join(format!(".{}.part-{}", id.as_str(), uuid::Uuid::new_v4()));
        let io = |context: String| move |source| BlobstoreError::Io { context, source };
        let file = tokio::fs::File::create(&temporary)
            .await
            .map_err(io(format!("creating {}", temporary.display())))?;
        match self.get_to_writer(id, file).await {
            Ok(size) => {
                tokio::fs::rename(&temporary, destination)
                    .await
                    .map_err(io(format!("renaming into {}", destination.display())))?;
                Ok(size)
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&temporary).await;
                Err(error)
            }
        }
    }

    /// Reads a whole blob into memory, verified (for small blobs: manifests, templates).
    pub async fn get_bytes(&self, id: &BlobId) -> Result<Vec<u8>, BlobstoreError> {
        let mut out = Vec::new();
        self.get_to_writer(id, &mut out).await?;
        Ok(out)
    }

    /// Deletes a blob (a missing blob is not an error).
    pub async fn delete(&self, id: &BlobId) -> Result<(), BlobstoreError> {
        match self.store.delete(&Self::blob_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.backend(source)),
        }
    }

    /// Every stored blob id.
    pub async fn list(&self) -> Result<Vec<BlobId>, BlobstoreError> {
        let prefix = StorePath::from("blobs");
        let mut stream = self.store.list(Some(&prefix));
        let mut ids = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.backend(e))?;
            if let Some(name) = meta.location.filename() {
                if let Ok(id) = BlobId::parse(name) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes staging objects left by interrupted writes (call at start-up, before serving).
    pub async fn clean_staging(&self) -> Result<usize, BlobstoreError> {
        let prefix = StorePath::from("staging");
        let locations: Vec<StorePath> = self
            .store
            .list(Some(&prefix))
            .filter_map(|meta| async move { meta.ok().map(|m| m.location) })
            .collect()
            .await;
        let mut removed = 0;
        for location in locations {
            if self.store.delete(&location).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn signature(&self, id: &BlobId, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(format!("GET\n/blobs/{}\n{expires}", id.as_str()).as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The path and query an agent uses to fetch a blob from the director until `valid_for`
    /// has passed: `/blobs/<id>?exp=<unix seconds>&sig=<hex>`.
    pub fn signed_path(&self, id: &BlobId, valid_for: Duration) -> String {
        let expires = unix_now().saturating_add(valid_for.as_secs());
        format!(
            "/blobs/{}?exp={expires}&sig={}",
            id.as_str(),
            self.signature(id, expires)
        )
    }

    /// The path and query an agent `PUT`s a new blob to (a compiled package, logs) until
    /// `expires` (unix seconds): `/blobs/uploads/<nonce>?exp=<expires>&sig=<hex>`. The nonce
    /// names the upload slot recorded for it (see [`slots`]), which decides what the URL
    /// may store and takes one `PUT` only.
    fn signed_upload_path(&self, nonce: &str, expires: u64) -> String {
        format!(
            "/blobs/uploads/{nonce}?exp={expires}&sig={}",
            self.upload_signature(nonce, expires)
        )
    }

    fn upload_signature(&self, nonce: &str, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.signing_key)
            .expect("HMAC takes keys of any length");
        mac.update(format!("PUT\n/blobs/uploads/{nonce}\n{expires}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `sig` signs an upload to `nonce` until `expires`, not yet passed.
    pub fn verify_upload_signature(&self, nonce: &str, expires: u64, sig: &str) -> bool {
        if expires < unix_now() {
            return false;
        }
        let expected = self.upload_signature(nonce, expires);
        expected.len() == sig.len() && openssl::memcmp::eq(expected.as_bytes(), sig.as_bytes())
    }

    /// Whether `sig` signs `id` until `expires` and that time has not passed (constant-time
    /// comparison of the signature).
    pub fn verify_signature(&self, id: &BlobId, expires: u64, sig: &str) -> bool {
        if expires < unix_now() {
            return false;
        }
        let expected = self.signature(id, expires);
        expected.len() == sig.len() && openssl::memcmp::eq(expected.as_bytes(), sig.as_bytes())
    }

    /// A URL at the S3 store itself, presigned for `valid_for` (S3 backend only).
    #[cfg(feature = "s3")]
    pub async fn presigned_url(
        &self,
        id: &BlobId,
        valid_for: Duration,
    ) -> Result<Option<String>, BlobstoreError> {
        use object_store::signer::Signer;
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(reqwest::Method::GET, &Self::blob_path(id), valid_for)
            .await
            .map_err(|e| self.backend(e))?;
        Ok(Some(url.to_string()))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hashes a file with SHA-256 (for checking what a user uploads against `--sha256`).
pub async fn sha256_file(path: &Path) -> Result<BlobId, BlobstoreError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|source| BlobstoreError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buffer)
            .await
            .map_err(|source| BlobstoreError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(BlobId::from_hasher(hasher))
}

impl From<&StoredBlob> for director_state::NewBlob {
    /// The record of a blob the blobstore just stored.
    fn from(stored: &StoredBlob) -> director_state::NewBlob {
        director_state::NewBlob {
            id: stored.id.as_str().to_string(),
            size: stored.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, Blobstore) {
        local_signing_with(b"key")
    }

    fn local_signing_with(key: &[u8]) -> (tempfile::TempDir, Blobstore) {
        let dir = tempfile::tempdir().unwrap();
        let store = Blobstore::open(
            &BlobstoreConfig::Local {
                path: dir.path().join("blobs"),
            },
            key.to_vec(),
        )
        .unwrap();
        (dir, store)
    }

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[tokio::test]
    async fn stores_by_content_and_dedupes() {
        let (_dir, store) = local();
        let first = store.put_reader(&b"hello"[..], None, None).await.unwrap();
        assert_eq!(first.id.as_str(), HELLO_SHA256);
        assert!(first.created);
        let second = store.put_bytes(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(
            (second.id.clone(), second.created),
            (first.id.clone(), false)
        );
        assert_eq!(store.get_bytes(&first.id).await.unwrap(), b"hello");
        assert_eq!(store.list().await.unwrap(), vec![first.id]);
    }

    #[tokio::test]
    async fn rejects_a_digest_mismatch_and_stores_nothing() {
        let (dir, store) = local();
        let wrong = BlobId::parse(&"0".repeat(64)).unwrap();
        let error = store
            .put_reader(&b"hello"[..], Some(&wrong), None)
            .await
            .unwrap_err();
        assert!(
            matches!(error, BlobstoreError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(store.list().await.unwrap().is_empty());
        let staging = dir.path().join("blobs/staging");
        assert!(!staging.exists() || std::fs::read_dir(staging).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn detects_corruption_on_read() {
        let (dir, store) = local();
        let blob = store.put_bytes(Bytes::from_static(b"hello")).await.unwrap();
        std::fs::write(
            dir.path().join("blobs/blobs").join(blob.id.as_str()),
            b"jello",
        )
        .unwrap();
        let target = dir.path().join("out");
        let error = store.get_to_file(&blob.id, &target).await.unwrap_err();
        assert!(matches!(error, BlobstoreError::Corrupt(_)), "{error}");
        assert!(
            !target.exists(),
            "a corrupt blob must not reach its destination"
        );
    }

    #[tokio::test]
    async fn streams_a_blob_in_chunks_and_fails_a_corrupt_one_at_the_end() {
        let (dir, store) = local();
        // Three and a half chunks: the stream must not hand the whole blob over at once.
        let content: Vec<u8> = (0..CHUNK * 7 / 2).map(|n| (n % 251) as u8).collect();
        let blob = store.put_bytes(Bytes::from(content.clone())).await.unwrap();
        let opened = store.get_stream(&blob.id).await.unwrap();
        assert_eq!(opened.size, content.len() as u64);
        let chunks: Vec<Bytes> = opened.chunks.map(|chunk| chunk.unwrap()).collect().await;
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|chunk| chunk.len() <= CHUNK));
        assert_eq!(chunks.concat(), content);

        let mut damaged = content.clone();
        damaged[CHUNK * 3] ^= 1;
        std::fs::write(
            dir.path().join("blobs/blobs").join(blob.id.as_str()),
            &damaged,
        )
        .unwrap();
        let results: Vec<Result<Bytes, BlobstoreError>> = store
            .get_stream(&blob.id)
            .await
            .unwrap()
            .chunks
            .collect()
            .await;
        let (last, before) = results.split_last().unwrap();
        assert!(before.iter().all(Result::is_ok));
        assert!(
            matches!(last, Err(BlobstoreError::Corrupt(id)) if *id == blob.id),
            "{last:?}"
        );
        assert!(matches!(
            store
                .get_stream(&BlobId::parse(&"0".repeat(64)).unwrap())
                .await,
            Err(BlobstoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn limits_the_size() {
        let (_dir, store) = local();
        let error = store
            .put_reader(&[0u8; 100][..], None, Some(10))
            .await
            .unwrap_err();
        assert!(matches!(error, BlobstoreError::TooLarge { limit: 10 }));
        assert!(store.list().await.unwrap().is_empty());
    }

    #[test]
    fn debug_never_prints_the_signing_key() {
        let (_dir, store) = local_signing_with(b"hmac-signing-secret");
        let printed = format!("{store:?}");
        assert!(printed.contains("<redacted>"), "{printed}");
        for leak in ["hmac-signing-secret", "104, 109, 97, 99"] {
            assert!(!printed.contains(leak), "{printed}");
        }
    }

    #[tokio::test]
    async fn signed_paths_verify_and_expire() {
        let (_dir, store) = local();
        let id = BlobId::parse(HELLO_SHA256).unwrap();
        let path = store.signed_path(&id, Duration::from_secs(60));
        let query = path.split_once('?').unwrap().1;
        let mut exp = 0;
        let mut sig = "";
        for pair in query.split('&') {
            match pair.split_once('=').unwrap() {
                ("exp", v) => exp = v.parse().unwrap(),
                ("sig", v) => sig = v,
                _ => {}
            }
        }
        assert!(store.verify_signature(&id, exp, sig));
        assert!(
            !store.verify_signature(&id, exp + 1, sig),
            "the expiry is signed"
        );
        assert!(
            !store.verify_signature(&id, unix_now() - 1, &store.signature(&id, unix_now() - 1)),
            "expired"
        );
        let other = BlobId::parse(&"a".repeat(64)).unwrap();
        assert!(!store.verify_signature(&other, exp, sig));
    }

    #[tokio::test]
    async fn cleans_staging_left_by_interrupted_writes() {
        let (dir, store) = local();
        let staging = dir.path().join("blobs/staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("left-over"), b"partial").unwrap();
        assert_eq!(store.clean_staging().await.unwrap(), 1);
        assert!(std::fs::read_dir(staging).unwrap().next().is_none());
    }

    #[test]
    fn ids_are_sha256_hex() {
        assert!(BlobId::parse(HELLO_SHA256).is_ok());
        assert!(BlobId::parse(&format!("sha256:{HELLO_SHA256}")).is_ok());
        assert!(BlobId::parse("../../etc/passwd").is_err());
        assert!(BlobId::parse(&"G".repeat(64)).is_err());
    }
}
