-- Which director runs each task: several directors may share one database (PostgreSQL),
-- and a director that starts fails only the tasks whose director has stopped beating.

-- The directors using this database, with the last time each said it is alive.
CREATE TABLE directors (
    id TEXT PRIMARY KEY NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- The director that runs the task (NULL for tasks queued before this migration: no
-- director owns them).
ALTER TABLE tasks ADD COLUMN director_id TEXT;
CREATE INDEX tasks_director_id ON tasks (director_id);
