//! Releases, stemcells, uploads, exports, blobs and clean-up.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A release and its uploaded versions (`GET /releases`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub release_versions: Vec<ReleaseVersion>,
}

/// One uploaded version of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseVersion {
    /// `1.2.0`, `0+dev.3`.
    pub version: String,
    /// The release repository's commit.
    pub commit_hash: Option<String>,
    /// Whether it was created from a dirty work tree.
    pub uncommitted_changes: bool,
    /// Whether a deployment uses it.
    pub currently_deployed: bool,
    /// The deployments that use it.
    pub deployments: Vec<String>,
    /// When it was uploaded (Unix seconds).
    pub created_at: i64,
}

/// An uploaded stemcell (`GET /stemcells`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stemcell {
    /// `bosh-local-debian-bookworm`.
    pub name: String,
    /// `debian-bookworm`.
    pub operating_system: String,
    /// Its version.
    pub version: String,
    /// `sha256:<hex>` of its image.
    pub sha256: String,
    /// The stemcell API version.
    pub api_version: i64,
    /// The image formats (`local`, `docker-rootfs`).
    pub formats: Vec<String>,
    /// The CPI's id of the image, once a deploy created it.
    pub cid: String,
    /// The deployments that use it.
    pub deployments: Vec<String>,
    /// When it was uploaded (Unix seconds).
    pub created_at: i64,
}

/// `POST /releases` and `POST /stemcells` parameters. The body is the tarball itself
/// (`application/gzip`), or a [`RemoteUpload`] (`application/json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The tarball's digest (`sha256:<hex>` or hex); checked while it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Upload again even when the same version is there (repairs missing blobs).
    #[serde(default)]
    pub fix: bool,
}

/// A release or stemcell the director fetches itself: an `http(s)` URL, or a `file://`
/// path that only a dev director reads (in place).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemoteUpload {
    /// Where it is.
    pub location: String,
    /// Its digest, when known.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// `DELETE /releases/{name}` and `DELETE /stemcells/{name}/{version}` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// One version of the release (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Succeed even when it is not there.
    #[serde(default)]
    pub force: bool,
}

/// `POST /cleanup`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CleanupRequest {
    /// Every unused release and stemcell version and every orphaned disk, not only all
    /// but the two newest.
    #[serde(default)]
    pub all: bool,
}

/// `POST /releases/export` (BOSH's route): a release version compiled for a stemcell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportRequest {
    /// Release name.
    pub release_name: String,
    /// Release version.
    pub release_version: String,
    /// The stemcell's operating system.
    pub stemcell_os: String,
    /// The stemcell's version.
    pub stemcell_version: String,
}

impl ExportRequest {
    /// The file name bosh gives the tarball: `<name>-<version>-<os>-<stemcell version>.tgz`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}.tgz",
            self.release_name, self.release_version, self.stemcell_os, self.stemcell_version
        )
    }
}

/// The result of an export task (its `result` text is this as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedRelease {
    /// What was exported.
    #[serde(flatten)]
    pub request: ExportRequest,
    /// The tarball's blob id (lowercase hex sha256).
    pub blob_id: String,
    /// Its digest, `sha256:<hex>`.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `GET /releases/exports/{id}` and `GET /blobs/{id}/link`: where to download a blob
/// without the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BlobLink {
    /// The blob id (lowercase hex sha256).
    pub blob_id: String,
    /// `sha256:<hex>`.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The signed, expiring path to `GET` it from.
    pub path: String,
}
