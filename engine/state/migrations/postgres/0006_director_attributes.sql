-- Director-wide settings an operator changes at run time (BOSH's director_attributes):
-- `resurrection_paused` ("true" or "false"), with when it was last set.
CREATE TABLE director_attributes (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
