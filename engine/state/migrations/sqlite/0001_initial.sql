-- The director's state, first version (SQLite).
--
-- Forward-only: once released this file is never edited (the checksum recorded in
-- _sqlx_migrations would no longer match and the director refuses to open the database);
-- changes come as a new numbered file here AND in ../postgres/ with the same name.
--
-- Conventions shared with the PostgreSQL schema, so that every query is the same text on
-- both backends:
-- * times are seconds since the Unix epoch (UTC), in INTEGER columns named *_at;
-- * JSON documents are TEXT written by serde_json (kept byte for byte, key order included);
-- * booleans are INTEGER 0/1 (STRICT tables have no BOOLEAN type);
-- * ids are INTEGER PRIMARY KEY AUTOINCREMENT, so an id is never reused after a delete.

-- Objects in the blobstore, addressed by the sha256 of their content. A row exists as soon
-- as the blob is stored, before anything refers to it; clean-up deletes the blobs that no
-- row refers to (see the foreign keys to blobs below).
CREATE TABLE blobs (
    id TEXT PRIMARY KEY NOT NULL
        CHECK (length(id) = 64 AND id NOT GLOB '*[^0-9a-f]*'),
    size INTEGER NOT NULL CHECK (size >= 0),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE release_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    version TEXT NOT NULL CHECK (version <> ''),
    commit_hash TEXT,
    uncommitted_changes INTEGER NOT NULL CHECK (uncommitted_changes IN (0, 1)),
    manifest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (release_id, version)
) STRICT;

-- Jobs and packages belong to a release and are shared by its versions: a version that
-- brings a job or package with an unchanged fingerprint links the existing row.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    name TEXT NOT NULL CHECK (name <> ''),
    version TEXT NOT NULL,
    fingerprint TEXT NOT NULL CHECK (fingerprint <> ''),
    digest TEXT NOT NULL,
    blob_id TEXT NOT NULL REFERENCES blobs (id),
    spec TEXT NOT NULL,
    UNIQUE (release_id, name, fingerprint)
) STRICT;
CREATE INDEX jobs_blob_id ON jobs (blob_id);

-- digest and blob_id are NULL for a package that came only compiled (compiled releases).
CREATE TABLE packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    name TEXT NOT NULL CHECK (name <> ''),
    version TEXT NOT NULL,
    fingerprint TEXT NOT NULL CHECK (fingerprint <> ''),
    digest TEXT,
    blob_id TEXT REFERENCES blobs (id),
    dependencies TEXT NOT NULL,
    UNIQUE (release_id, name, fingerprint),
    CHECK ((digest IS NULL) = (blob_id IS NULL))
) STRICT;
CREATE INDEX packages_blob_id ON packages (blob_id);

CREATE TABLE release_version_jobs (
    release_version_id INTEGER NOT NULL REFERENCES release_versions (id) ON DELETE CASCADE,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (release_version_id, job_id)
) STRICT;
CREATE INDEX release_version_jobs_job_id ON release_version_jobs (job_id);

CREATE TABLE release_version_packages (
    release_version_id INTEGER NOT NULL REFERENCES release_versions (id) ON DELETE CASCADE,
    package_id INTEGER NOT NULL REFERENCES packages (id),
    PRIMARY KEY (release_version_id, package_id)
) STRICT;
CREATE INDEX release_version_packages_package_id ON release_version_packages (package_id);

-- The compiled-package cache (reference §7.2): one build per package, stemcell OS and
-- version, and dependency key. Deleting a package drops its compiled builds; their blobs are
-- then unreferenced and clean-up takes them.
CREATE TABLE compiled_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    package_id INTEGER NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    stemcell_os TEXT NOT NULL,
    stemcell_version TEXT NOT NULL,
    dependency_key TEXT NOT NULL,
    build INTEGER NOT NULL CHECK (build >= 1),
    digest TEXT NOT NULL,
    blob_id TEXT NOT NULL REFERENCES blobs (id),
    created_at INTEGER NOT NULL,
    UNIQUE (package_id, stemcell_os, stemcell_version, dependency_key)
) STRICT;
CREATE INDEX compiled_packages_blob_id ON compiled_packages (blob_id);

-- sha256 is the digest of the stemcell's `image` file, kept in the blobstore as
-- image_blob_id (absent for light stemcells); cid is what the CPI's create_stemcell
-- returned.
CREATE TABLE stemcells (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (name <> ''),
    operating_system TEXT NOT NULL,
    version TEXT NOT NULL CHECK (version <> ''),
    sha256 TEXT NOT NULL,
    api_version INTEGER NOT NULL,
    cloud_properties TEXT NOT NULL,
    formats TEXT NOT NULL,
    cid TEXT NOT NULL,
    image_blob_id TEXT REFERENCES blobs (id),
    created_at INTEGER NOT NULL,
    UNIQUE (name, version)
) STRICT;

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (name <> ''),
    created_at INTEGER NOT NULL
) STRICT;

-- Every manifest a deployment was deployed with; the latest row is the current one.
CREATE TABLE deployment_manifests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    text TEXT NOT NULL
) STRICT;
CREATE INDEX deployment_manifests_deployment_id ON deployment_manifests (deployment_id, id);

-- What a deployment runs: a release version or stemcell listed here cannot be deleted.
CREATE TABLE deployment_release_versions (
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    release_version_id INTEGER NOT NULL REFERENCES release_versions (id),
    PRIMARY KEY (deployment_id, release_version_id)
) STRICT;
CREATE INDEX deployment_release_versions_release_version_id
    ON deployment_release_versions (release_version_id);

CREATE TABLE deployment_stemcells (
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    stemcell_id INTEGER NOT NULL REFERENCES stemcells (id),
    PRIMARY KEY (deployment_id, stemcell_id)
) STRICT;
CREATE INDEX deployment_stemcells_stemcell_id ON deployment_stemcells (stemcell_id);

-- An instance outlives its VMs; a deployment cannot be deleted while it has instances.
-- spec is the last apply spec sent to the agent (NULL before the first apply);
-- update_completed is written false before an update touches the instance.
CREATE TABLE instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    instance_group TEXT NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    instance_index INTEGER NOT NULL CHECK (instance_index >= 0),
    az TEXT,
    state TEXT NOT NULL CHECK (state IN ('started', 'stopped', 'detached')),
    bootstrap INTEGER NOT NULL CHECK (bootstrap IN (0, 1)),
    spec TEXT,
    update_completed INTEGER NOT NULL DEFAULT 0 CHECK (update_completed IN (0, 1)),
    UNIQUE (deployment_id, instance_group, instance_index)
) STRICT;

CREATE TABLE vms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cid TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL UNIQUE,
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    created_at INTEGER NOT NULL,
    env TEXT NOT NULL
) STRICT;
CREATE INDEX vms_instance_id ON vms (instance_id);

-- size in MiB. An orphaned disk keeps its row (orphaned_at set) until it is deleted from
-- the IaaS; an attached disk must be orphaned before its instance row can go.
CREATE TABLE persistent_disks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cid TEXT NOT NULL UNIQUE,
    instance_id INTEGER REFERENCES instances (id) ON DELETE SET NULL,
    size INTEGER NOT NULL CHECK (size > 0),
    cloud_properties TEXT NOT NULL,
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    orphaned_at INTEGER,
    CHECK (instance_id IS NOT NULL OR orphaned_at IS NOT NULL)
) STRICT;
CREATE INDEX persistent_disks_instance_id ON persistent_disks (instance_id);

-- An address is text ("10.0.0.5"); instance_id is NULL for a static IP the deployment
-- holds but no instance uses yet.
CREATE TABLE ip_reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    instance_id INTEGER REFERENCES instances (id) ON DELETE CASCADE,
    is_static INTEGER NOT NULL CHECK (is_static IN (0, 1)),
    UNIQUE (network, address)
) STRICT;
CREATE INDEX ip_reservations_deployment_id ON ip_reservations (deployment_id);
CREATE INDEX ip_reservations_instance_id ON ip_reservations (instance_id);

-- Values live in the config store; a row names one version of a deployment's variable.
CREATE TABLE variables (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value_id TEXT NOT NULL,
    value_digest TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (deployment_id, name, value_id)
) STRICT;

-- A task names its deployment as text: the task history outlives deleted deployments.
-- Event and debug logs are JSON-lines files written by the task runner; the row keeps
-- their paths.
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'processing', 'done', 'error', 'cancelling', 'cancelled', 'timeout')),
    description TEXT NOT NULL,
    deployment TEXT,
    username TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    result TEXT,
    context TEXT NOT NULL,
    event_log_path TEXT,
    debug_log_path TEXT
) STRICT;
CREATE INDEX tasks_deployment ON tasks (deployment, id);
CREATE INDEX tasks_state ON tasks (state, id);

-- The audit trail. task_id is not a foreign key: events outlive pruned tasks.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_name TEXT,
    deployment TEXT,
    task_id INTEGER,
    context TEXT NOT NULL,
    error TEXT
) STRICT;
CREATE INDEX events_time ON events (time, id);

-- One row per held lock; a lock whose expires_at has passed may be taken over.
CREATE TABLE locks (
    name TEXT PRIMARY KEY NOT NULL,
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX locks_task_id ON locks (task_id);
