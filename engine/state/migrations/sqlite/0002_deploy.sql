-- Deploys: cloud and runtime configs, the director's variable store, what deployments
-- provide through links, and the rendered templates applied to each instance.

-- Cloud and runtime configs with their history: the newest row of a (type, name) is current.
CREATE TABLE configs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL CHECK (type IN ('cloud', 'runtime')),
    name TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX configs_type_name ON configs (type, name, id);

-- The director's own config store for deployment variables (what a config server holds
-- in BOSH): generated or given values, JSON text, by deployment and name.
CREATE TABLE credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (deployment_id, name)
) STRICT;

-- What each deployment provides through links, as other deployments consume it (JSON).
CREATE TABLE deployment_links (
    deployment_id INTEGER PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    content TEXT NOT NULL
) STRICT;

-- The rendered templates archive of each job of an instance, as last applied.
CREATE TABLE rendered_templates (
    instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    job TEXT NOT NULL,
    blob_id TEXT NOT NULL REFERENCES blobs (id),
    PRIMARY KEY (instance_id, job)
) STRICT;
CREATE INDEX rendered_templates_blob_id ON rendered_templates (blob_id);
