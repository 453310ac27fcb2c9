-- Resurrection: director-wide settings an operator changes at run time (BOSH's
-- director_attributes: `resurrection_paused`, "true" or "false", with when it was last set),
-- and resurrection configs beside cloud and runtime ones.
CREATE TABLE director_attributes (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Resurrection configs (BOSH's `type: resurrection`) beside cloud and runtime ones: SQLite
-- cannot change a CHECK constraint, so the table is made again with its rows and ids.
CREATE TABLE configs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL CHECK (type IN ('cloud', 'runtime', 'resurrection')),
    name TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO configs_new (id, type, name, content, created_at)
    SELECT id, type, name, content, created_at FROM configs;
DROP TABLE configs;
ALTER TABLE configs_new RENAME TO configs;
CREATE INDEX configs_type_name ON configs (type, name, id);
