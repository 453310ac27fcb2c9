-- Resurrection: director-wide settings an operator changes at run time (BOSH's
-- director_attributes: `resurrection_paused`, "true" or "false", with when it was last set),
-- and resurrection configs beside cloud and runtime ones.
CREATE TABLE director_attributes (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Resurrection configs (BOSH's `type: resurrection`) beside cloud and runtime ones.
ALTER TABLE configs DROP CONSTRAINT configs_type_check;
ALTER TABLE configs ADD CONSTRAINT configs_type_check
    CHECK (type IN ('cloud', 'runtime', 'resurrection'));
