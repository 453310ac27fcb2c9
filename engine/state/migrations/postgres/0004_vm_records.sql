-- VMs the director asked a CPI for that no instance owns (yet): written before create_vm
-- ('creating': the agent id is known, the CPI's id not), given the CPI's id when create_vm
-- answers ('created'), and removed when the VM is deleted or an instance records it as
-- its VM (in the same transaction). A director that starts deletes the VMs of the records
-- no running task holds, finding those without an id by their agent id; one the CPI cannot
-- find stays, 'unknown', and keeps what it holds. addresses is what the VM was given, JSON
-- [[network, address], ...], and task_id the task that made it.
CREATE TABLE vm_records (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id TEXT NOT NULL UNIQUE,
    cid TEXT UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('creating', 'created', 'unknown')),
    purpose TEXT NOT NULL CHECK (purpose IN ('instance', 'compilation', 'errand')),
    label TEXT NOT NULL,
    deployment_id BIGINT REFERENCES deployments (id) ON DELETE SET NULL,
    instance_id BIGINT REFERENCES instances (id) ON DELETE SET NULL,
    task_id BIGINT,
    addresses TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX vm_records_instance_id ON vm_records (instance_id);

-- An address reserved for a VM that is not an instance's (a compilation VM) names its
-- record: it is released exactly when the record goes.
ALTER TABLE ip_reservations ADD COLUMN vm_record_id BIGINT
    REFERENCES vm_records (id) ON DELETE CASCADE;
CREATE INDEX ip_reservations_vm_record_id ON ip_reservations (vm_record_id);
