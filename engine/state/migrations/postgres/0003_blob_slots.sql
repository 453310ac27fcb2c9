-- Blob slots: what keeps a blob between "stored" and "recorded" (PostgreSQL).
--
-- A slot is either an upload slot, the record of one signed PUT URL the director handed to
-- an agent (max_bytes set: its size cap; taken_at set once a PUT took it; blob_id set to
-- what that PUT stored), or a hold the director takes on a blob it stores itself (rendered
-- templates, an exported tarball, a release's jobs and packages) or hands out a download
-- link for (max_bytes NULL, blob_id set from the start). blob_id is a foreign key to blobs
-- like every other reference, so a slot keeps its blob from clean-up until the slot is
-- released (the real record landed) or held_until passed (clean-up removes expired slots
-- first). held_until is later than any signed URL that can still deliver the blob.
CREATE TABLE blob_slots (
    nonce TEXT PRIMARY KEY CHECK (length(nonce) = 32),
    purpose TEXT NOT NULL CHECK (purpose <> ''),
    task_id BIGINT REFERENCES tasks (id) ON DELETE CASCADE,
    max_bytes BIGINT CHECK (max_bytes >= 0),
    expires_at BIGINT NOT NULL,
    held_until BIGINT NOT NULL CHECK (held_until >= expires_at),
    taken_at BIGINT,
    blob_id TEXT REFERENCES blobs (id),
    created_at BIGINT NOT NULL
);
CREATE INDEX blob_slots_blob_id ON blob_slots (blob_id);
CREATE INDEX blob_slots_held_until ON blob_slots (held_until);
