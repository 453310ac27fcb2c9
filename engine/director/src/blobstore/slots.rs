//! Upload slots and holds: the director's side of `director_state`'s `blob_slots`.
//!
//! An agent stores a blob (a compiled package, a log tarball) by `PUT`ting it to a signed
//! URL the director made for that one job: [`Blobstore::open_upload`] records an upload
//! slot (its [`Purpose`], size cap, expiry and task) and answers the URL naming the slot's
//! random nonce. The `PUT` takes the slot (a second `PUT` to the same URL is refused), is
//! cut off at the slot's cap, and fills the slot with the blob it stored. When the agent
//! reports its result, [`Blobstore::accept_upload`] accepts the blob id only if it is the
//! one that URL received.
//!
//! A slot, and a hold the director takes on a blob it stores itself
//! ([`Blobstore::put_held`]) or hands out a download link for, keeps its blob from clean-up
//! between "stored" and "recorded": until it is released, or until `held_until`, which is
//! later than any signed URL that can still deliver the blob.

use std::time::Duration;

use bytes::Bytes;
use director_state::{NewBlob, NewSlot, State, StateError, TaskId};
use tokio::io::AsyncRead;

use super::{BlobId, Blobstore, BlobstoreError, RecordedError, StoredBlob, unix_now};

/// What a slot is for: it decides the slot's name in messages and how long it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A compiled package an agent uploads; recorded as a compiled build.
    CompiledPackage,
    /// The log tarball of an instance; downloaded by the CLI afterwards.
    Logs,
    /// The rendered templates of an instance's job; recorded once the instance is updated.
    RenderedTemplates,
    /// An exported release tarball; downloaded by the CLI afterwards.
    ExportedRelease,
    /// A release's or stemcell's archive being imported; recorded with the release.
    Import,
    /// A blob a download link was handed out for.
    Download,
    /// The DNS records agents fetch (`sync_dns`); held while they are the published ones.
    DnsRecords,
}

impl Purpose {
    /// The purpose in words, as messages and the state record it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::CompiledPackage => "a compiled package",
            Purpose::Logs => "logs",
            Purpose::RenderedTemplates => "rendered templates",
            Purpose::ExportedRelease => "an exported release",
            Purpose::Import => "an import",
            Purpose::Download => "a download link",
            Purpose::DnsRecords => "DNS records",
        }
    }

    /// The most an upload for this purpose may store (the director's own upload limit
    /// applies too).
    fn max_bytes(self) -> u64 {
        match self {
            Purpose::CompiledPackage | Purpose::Import => 20 << 30,
            Purpose::Logs | Purpose::ExportedRelease => 10 << 30,
            Purpose::RenderedTemplates | Purpose::Download | Purpose::DnsRecords => 1 << 30,
        }
    }

    /// How long after a slot stops accepting uploads its blob is still kept without a real
    /// record: time for the director to record it, or for the CLI to ask for its link.
    fn grace(self) -> Duration {
        match self {
            Purpose::Logs | Purpose::ExportedRelease => Duration::from_secs(60 * 60),
            Purpose::CompiledPackage
            | Purpose::RenderedTemplates
            | Purpose::Import
            | Purpose::Download
            | Purpose::DnsRecords => Duration::from_secs(10 * 60),
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upload URL the director made for one job ([`Blobstore::open_upload`]).
#[derive(Clone, Debug)]
pub struct UploadSlot {
    /// The URL the agent `PUT`s to (`<director>/blobs/uploads/<nonce>?exp=…&sig=…`).
    pub url: String,
    /// The slot's nonce.
    pub nonce: String,
    /// What it is for.
    pub purpose: Purpose,
}

/// What an agent reported does not match what its upload URL received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The agent reported another blob than the one its URL received.
    #[error(
        "the agent reported blob {reported} for {purpose}, but its upload URL received blob {received}"
    )]
    Mismatch {
        /// What the slot was for.
        purpose: Purpose,
        /// What the agent said.
        reported: String,
        /// What the URL received.
        received: String,
    },
    /// The agent reported a blob, but nothing was uploaded to its URL.
    #[error(
        "the agent reported blob {reported} for {purpose}, but nothing was uploaded to its upload URL"
    )]
    NothingReceived {
        /// What the slot was for.
        purpose: Purpose,
        /// What the agent said.
        reported: String,
    },
    /// The slot is gone (it expired and clean-up removed it).
    #[error("the upload URL for {purpose} expired before the agent's result arrived")]
    Gone {
        /// What the slot was for.
        purpose: Purpose,
    },
    /// The state failed.
    #[error(transparent)]
    State(Box<StateError>),
}

impl From<StateError> for SlotError {
    fn from(error: StateError) -> SlotError {
        SlotError::State(Box::new(error))
    }
}

fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// A hold record for `purpose`, kept for `valid_for` plus the purpose's grace.
fn hold(purpose: Purpose, task: Option<TaskId>, valid_for: Duration) -> NewSlot {
    let expires_at = i64::try_from(unix_now())
        .unwrap_or(i64::MAX)
        .saturating_add(seconds(valid_for));
    NewSlot {
        nonce: new_nonce(),
        purpose: purpose.as_str().to_string(),
        task_id: task,
        max_bytes: None,
        expires_at,
        held_until: expires_at.saturating_add(seconds(purpose.grace())),
    }
}

impl Blobstore {
    /// Records an upload slot for `purpose` (a `PUT` of at most the purpose's cap, accepted
    /// for `valid_for`) and answers its signed URL at `director_url`.
    pub async fn open_upload(
        &self,
        state: &State,
        director_url: &str,
        purpose: Purpose,
        task: Option<TaskId>,
        valid_for: Duration,
    ) -> Result<UploadSlot, StateError> {
        let mut slot = hold(purpose, task, valid_for);
        slot.max_bytes = Some(purpose.max_bytes());
        state.blobs().open_slot(&slot).await?;
        let expires = u64::try_from(slot.expires_at).unwrap_or(0);
        Ok(UploadSlot {
            url: format!(
                "{director_url}{}",
                self.signed_upload_path(&slot.nonce, expires)
            ),
            nonce: slot.nonce,
            purpose,
        })
    }

    /// The blob an agent reports for `slot`, if it is what the slot's URL received. The
    /// slot keeps holding the blob; release it once the blob's real record landed
    /// ([`Blobstore::release`]), or let it expire (logs, which nothing records).
    pub async fn accept_upload(
        &self,
        state: &State,
        slot: &UploadSlot,
        reported: &str,
    ) -> Result<BlobId, SlotError> {
        let recorded = state
            .blobs()
            .slot(&slot.nonce)
            .await?
            .ok_or(SlotError::Gone {
                purpose: slot.purpose,
            })?;
        match recorded.blob_id {
            Some(received) if received == reported => {
                BlobId::parse(&received).map_err(|_| SlotError::Mismatch {
                    purpose: slot.purpose,
                    reported: reported.to_string(),
                    received,
                })
            }
            Some(received) => Err(SlotError::Mismatch {
                purpose: slot.purpose,
                reported: reported.to_string(),
                received,
            }),
            None => Err(SlotError::NothingReceived {
                purpose: slot.purpose,
                reported: reported.to_string(),
            }),
        }
    }

    /// Releases a slot or hold: the blob's real record landed (or it is no longer needed).
    pub async fn release(&self, state: &State, nonce: &str) -> Result<(), StateError> {
        state.blobs().release_slot(nonce).await.map(|_| ())
    }

    /// Stores `reader` and records it under a new hold for `purpose` that lasts `valid_for`
    /// (plus the purpose's grace), race-free against clean-up; answers the blob and the
    /// hold's nonce (to release it once the real record landed).
    pub async fn put_held(
        &self,
        state: &State,
        reader: impl AsyncRead + Unpin,
        expected: Option<&BlobId>,
        purpose: Purpose,
        task: Option<TaskId>,
        valid_for: Duration,
    ) -> Result<(StoredBlob, String), RecordedError<StateError>> {
        let slot = hold(purpose, task, valid_for);
        let held = &slot;
        let stored = self
            .put_recorded(reader, expected, None, |blob| async move {
                state
                    .blobs()
                    .hold(&NewBlob::from(&blob), held)
                    .await
                    .map(|_| ())
            })
            .await?;
        Ok((stored, slot.nonce))
    }

    /// [`Blobstore::put_held`] for bytes in memory.
    pub async fn put_bytes_held(
        &self,
        state: &State,
        content: Bytes,
        purpose: Purpose,
        task: Option<TaskId>,
        valid_for: Duration,
    ) -> Result<(StoredBlob, String), RecordedError<StateError>> {
        self.put_held(state, &content[..], None, purpose, task, valid_for)
            .await
    }

    /// Holds a recorded blob for a download link valid for `valid_for`; answers false when
    /// the blob is not recorded (nothing to hold, nothing to download).
    pub async fn hold_for_download(
        &self,
        state: &State,
        id: &BlobId,
        valid_for: Duration,
    ) -> Result<bool, StateError> {
        state
            .blobs()
            .hold_recorded(id.as_str(), &hold(Purpose::Download, None, valid_for))
            .await
    }

    /// Takes the upload slot `nonce` for one `PUT`, stores `reader` (cut off at the slot's
    /// cap and `limit`), fills the slot with the stored blob and only then puts the content
    /// under its name. A `PUT` that fails before the blob is recorded gives the slot back.
    pub async fn put_into_slot(
        &self,
        state: &State,
        nonce: &str,
        reader: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<StoredBlob, PutSlotError> {
        let slot = match state.blobs().take_slot(nonce).await? {
            director_state::Taken::Slot(slot) => slot,
            director_state::Taken::Unknown => return Err(PutSlotError::Unknown),
            director_state::Taken::AlreadyTaken => return Err(PutSlotError::AlreadyUsed),
            director_state::Taken::Expired => return Err(PutSlotError::Expired),
        };
        let cap = slot.max_bytes.unwrap_or(limit).min(limit);
        let stored = self
            .put_recorded(reader, None, Some(cap), |blob| async move {
                state
                    .blobs()
                    .fill_slot(nonce, &NewBlob::from(&blob))
                    .await
                    .map(|_| ())
            })
            .await;
        match stored {
            Ok(stored) => Ok(stored),
            Err(error) => {
                // Nothing was recorded: the agent may try the same URL again.
                let _ = state.blobs().give_back_slot(nonce).await;
                Err(match error {
                    RecordedError::Store(error) => PutSlotError::Store(error),
                    RecordedError::Record(error) => PutSlotError::State(error),
                })
            }
        }
    }
}

/// Why a `PUT` to an upload URL was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutSlotError {
    /// No such upload slot (never made, or removed after it expired).
    #[error("this upload URL is unknown to the director (it expired or was never made)")]
    Unknown,
    /// The URL was used already.
    #[error("this upload URL was used already: each upload URL takes one upload")]
    AlreadyUsed,
    /// The URL expired.
    #[error("this upload URL has expired")]
    Expired,
    /// Storing failed (too large, the store failed).
    #[error(transparent)]
    Store(BlobstoreError),
    /// The state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::BlobstoreConfig;

    async fn open() -> (tempfile::TempDir, State, Blobstore) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(&format!("sqlite://{}/state.db", dir.path().display()))
            .await
            .unwrap();
        let store = Blobstore::open(
            &BlobstoreConfig::Local {
                path: dir.path().join("blobs"),
            },
            b"key".to_vec(),
        )
        .unwrap();
        (dir, state, store)
    }

    fn nonce(slot: &UploadSlot) -> &str {
        &slot.nonce
    }

    #[tokio::test]
    async fn an_upload_url_takes_one_put_within_its_cap_and_only_its_blob_is_accepted() {
        let (_dir, state, store) = open().await;
        let slot = store
            .open_upload(
                &state,
                "http://director",
                Purpose::Logs,
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(slot.url.starts_with("http://director/blobs/uploads/"));

        // Over the cap: refused, and the slot is given back.
        let error = store
            .put_into_slot(&state, nonce(&slot), &[0u8; 100][..], 10)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                PutSlotError::Store(BlobstoreError::TooLarge { limit: 10 })
            ),
            "{error:?}"
        );
        let stored = store
            .put_into_slot(&state, nonce(&slot), &b"logs"[..], 10)
            .await
            .unwrap();
        let error = store
            .put_into_slot(&state, nonce(&slot), &b"more logs"[..], 10)
            .await
            .unwrap_err();
        assert!(matches!(error, PutSlotError::AlreadyUsed), "{error:?}");
        assert_eq!(
            error.to_string(),
            "this upload URL was used already: each upload URL takes one upload"
        );

        // Another blob that exists is not what this URL received.
        let other = store
            .put_bytes_held(
                &state,
                Bytes::from_static(b"someone else's"),
                Purpose::ExportedRelease,
                None,
                Duration::ZERO,
            )
            .await
            .unwrap()
            .0;
        let error = store
            .accept_upload(&state, &slot, other.id.as_str())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the agent reported blob {} for logs, but its upload URL received blob {}",
                other.id, stored.id
            )
        );
        assert_eq!(
            store
                .accept_upload(&state, &slot, stored.id.as_str())
                .await
                .unwrap(),
            stored.id
        );
        // Held: clean-up keeps it while the slot lives.
        let removed = crate::uploads::remove_unreferenced_blobs(&state, &store, 0)
            .await
            .unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        assert!(store.exists(&stored.id).await.unwrap());

        // A URL nothing was uploaded to proves nothing.
        let empty = store
            .open_upload(
                &state,
                "http://director",
                Purpose::CompiledPackage,
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let error = store
            .accept_upload(&state, &empty, stored.id.as_str())
            .await
            .unwrap_err();
        assert!(
            matches!(error, SlotError::NothingReceived { .. }),
            "{error:?}"
        );
        let error = store
            .put_into_slot(&state, "0123456789abcdef0123456789abcdef", &b"x"[..], 10)
            .await
            .unwrap_err();
        assert!(matches!(error, PutSlotError::Unknown), "{error:?}");
        state.close().await;
    }
}
