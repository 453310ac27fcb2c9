//! Records of VMs that no instance owns (yet): every VM the director asks a CPI for is
//! recorded before `create_vm` and stays recorded until it is deleted or an instance records
//! it as its VM ([`Instances::set_vm`](super::Instances::set_vm) removes the record in the
//! same transaction). A director that dies meanwhile leaves the record, which the next one
//! reconciles at start-up: what a record holds (a compilation VM's address) is released
//! only with it.

use serde_json::Value;

use super::sql::{Begin, Columns, Conn, params};
use super::{
    DeploymentId, InstanceId, Object, State, StateError, TaskId, TaskState, Violation, now,
};

/// What a recorded VM is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmPurpose {
    /// An instance's VM, until the instance records it.
    Instance,
    /// A compilation VM.
    Compilation,
    /// An errand's VM, for one run.
    Errand,
}

impl VmPurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VmPurpose::Instance => "instance",
            VmPurpose::Compilation => "compilation",
            VmPurpose::Errand => "errand",
        }
    }

    fn parse(text: &str) -> Result<VmPurpose, sqlx::Error> {
        match text {
            "instance" => Ok(VmPurpose::Instance),
            "compilation" => Ok(VmPurpose::Compilation),
            "errand" => Ok(VmPurpose::Errand),
            other => Err(sqlx::Error::Decode(
                format!("unknown VM purpose '{other}'").into(),
            )),
        }
    }
}

/// Where a recorded VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmRecordState {
    /// Recorded before `create_vm`: the CPI's id is not known (yet).
    Creating,
    /// `create_vm` answered; the CPI's id is recorded.
    Created,
    /// Left by a director that died while creating it, and the CPI cannot say whether
    /// it exists or where: kept (with what it holds) and reported.
    Unknown,
}

impl VmRecordState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VmRecordState::Creating => "creating",
            VmRecordState::Created => "created",
            VmRecordState::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Result<VmRecordState, sqlx::Error> {
        match text {
            "creating" => Ok(VmRecordState::Creating),
            "created" => Ok(VmRecordState::Created),
            "unknown" => Ok(VmRecordState::Unknown),
            other => Err(sqlx::Error::Decode(
                format!("unknown VM record state '{other}'").into(),
            )),
        }
    }
}

/// A VM about to be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVmRecord {
    /// The id of its agent (given to `create_vm`).
    pub agent_id: String,
    /// What it is for.
    pub purpose: VmPurpose,
    /// What it is for, in messages (`web/6f1c… (0)`, `the compilation VM for package 'x'`).
    pub label: String,
    /// Its deployment.
    pub deployment: Option<DeploymentId>,
    /// The instance it is for (instance and errand VMs).
    pub instance: Option<InstanceId>,
    /// The task making it.
    pub task: Option<TaskId>,
    /// The addresses it is given: `(network, address)`.
    pub addresses: Vec<(String, String)>,
}

/// A recorded VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRecord {
    /// The id of its agent.
    pub agent_id: String,
    /// The CPI's id, once `create_vm` answered.
    pub cid: Option<String>,
    /// Where it is in its life.
    pub state: VmRecordState,
    /// What it is for.
    pub purpose: VmPurpose,
    /// What it is for, in messages.
    pub label: String,
    /// Its deployment (while that exists).
    pub deployment: Option<DeploymentId>,
    /// The instance it is for (while that exists).
    pub instance: Option<InstanceId>,
    /// The task that made it.
    pub task: Option<TaskId>,
    /// The addresses it was given: `(network, address)`.
    pub addresses: Vec<(String, String)>,
    /// When it was recorded (Unix seconds).
    pub created_at: i64,
}

/// Records of VMs no instance owns; see [`State::vm_records`].
#[derive(Clone, Copy, Debug)]
pub struct VmRecords<'a> {
    pub(super) state: &'a State,
}

fn agent_object(agent_id: &str) -> Object {
    Object::VmOfAgent {
        agent_id: agent_id.to_string(),
    }
}

const COLUMNS: &str = "agent_id, cid, state, purpose, label, deployment_id, instance_id, task_id, \
                       addresses, created_at";

fn record_from_row(row: &impl Columns) -> Result<VmRecord, sqlx::Error> {
    let addresses: Value = row.json("addresses")?;
    let addresses =
        serde_json::from_value(addresses).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    Ok(VmRecord {
        agent_id: row.text("agent_id")?,
        cid: row.opt_text("cid")?,
        state: VmRecordState::parse(&row.text("state")?)?,
        purpose: VmPurpose::parse(&row.text("purpose")?)?,
        label: row.text("label")?,
        deployment: row.opt_int("deployment_id")?.map(DeploymentId),
        instance: row.opt_int("instance_id")?.map(InstanceId),
        task: row.opt_int("task_id")?.map(TaskId),
        addresses,
        created_at: row.int("created_at")?,
    })
}

impl VmRecords<'_> {
    /// Records a VM about to be created (state `creating`) and makes `holds`, addresses
    /// its deployment reserved for no instance ([`Instances::reserve_address`](
    /// super::Instances::reserve_address)), its own: they are released when the record
    /// goes. In one transaction; an address that is not such a reservation is
    /// [`StateError::NotFound`].
    pub async fn begin(
        &self,
        new: &NewVmRecord,
        holds: &[(String, String)],
    ) -> Result<(), StateError> {
        let addresses = serde_json::to_string(&new.addresses).unwrap_or_else(|_| "[]".into());
        let time = now();
        on_pool!(
            self.state,
            format!("recording the VM of agent {}", new.agent_id),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let row = transaction
                    .row(
                        "INSERT INTO vm_records (agent_id, cid, state, purpose, label, deployment_id, \
                         instance_id, task_id, addresses, created_at) \
                         VALUES ($1, NULL, 'creating', $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        params![
                            new.agent_id.as_str(),
                            new.purpose.as_str(),
                            new.label.as_str(),
                            new.deployment.map(|d| d.0),
                            new.instance.map(|i| i.0),
                            new.task.map(|t| t.0),
                            addresses.as_str(),
                            time
                        ],
                    )
                    .await
                    .exists_as(|| agent_object(&new.agent_id))?;
                let id = row.int("id")?;
                for (network, address) in holds {
                    let held = transaction
                        .run(
                            "UPDATE ip_reservations SET vm_record_id = $1 WHERE network = $2 \
                             AND address = $3 AND instance_id IS NULL AND vm_record_id IS NULL \
                             AND deployment_id = $4",
                            params![
                                id,
                                network.as_str(),
                                address.as_str(),
                                new.deployment.map_or(-1, |d| d.0)
                            ],
                        )
                        .await?;
                    if held != 1 {
                        return Err(StateError::NotFound {
                            object: Object::Address {
                                network: network.clone(),
                                address: address.clone(),
                            },
                        }
                        .into());
                    }
                }
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Records the CPI's id of the VM of `agent_id` (state `created`).
    pub async fn set_cid(&self, agent_id: &str, cid: &str) -> Result<(), StateError> {
        self.set(
            || format!("recording VM {cid} of agent {agent_id}"),
            "UPDATE vm_records SET cid = $1, state = 'created' WHERE agent_id = $2",
            params![cid, agent_id],
            agent_id,
        )
        .await
    }

    /// Marks the VM of `agent_id`, whose CPI id is not known, as one the CPI cannot find
    /// (state `unknown`).
    pub async fn set_unknown(&self, agent_id: &str) -> Result<(), StateError> {
        self.set(
            || format!("marking the VM of agent {agent_id} unknown"),
            "UPDATE vm_records SET state = 'unknown' WHERE agent_id = $1 AND cid IS NULL",
            params![agent_id],
            agent_id,
        )
        .await
    }

    /// Runs an update of one record; none changed is [`StateError::NotFound`].
    async fn set(
        &self,
        action: impl FnOnce() -> String,
        sql: &str,
        params: &[super::sql::Param<'_>],
        agent_id: &str,
    ) -> Result<(), StateError> {
        on_pool!(self.state, action(), |pool| {
            let mut conn = pool.acquire().await?;
            if conn.run(sql, params).await? == 0 {
                return Err(StateError::NotFound {
                    object: agent_object(agent_id),
                }
                .into());
            }
            Ok(())
        })
    }

    /// Forgets the VM of `agent_id` (deleted, or now an instance's) and releases what it
    /// held; a record already gone is fine.
    pub async fn remove(&self, agent_id: &str) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("forgetting the VM of agent {agent_id}"),
                "DELETE FROM vm_records WHERE agent_id = $1",
                params![agent_id],
            )
            .await
    }

    /// Every recorded VM, oldest first.
    pub async fn list(&self) -> Result<Vec<VmRecord>, StateError> {
        self.query(
            "listing recorded VMs",
            &format!("SELECT {COLUMNS} FROM vm_records ORDER BY id"),
        )
        .await
    }

    /// The recorded VMs of a deployment, oldest first.
    pub async fn of_deployment(
        &self,
        deployment: DeploymentId,
    ) -> Result<Vec<VmRecord>, StateError> {
        on_pool!(
            self.state,
            format!("listing the recorded VMs of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                    .rows(
                        &format!(
                            "SELECT {COLUMNS} FROM vm_records WHERE deployment_id = $1 ORDER BY id"
                        ),
                        params![deployment.0],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(record_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// The recorded VMs no running task is making or using: what a director that died
    /// left (after [`Directors::start`](super::Directors::start) failed them), and
    /// VMs a finished task could not delete.
    pub async fn abandoned(&self) -> Result<Vec<VmRecord>, StateError> {
        self.query(
            "listing abandoned VMs",
            &format!(
                "SELECT {} FROM vm_records r LEFT JOIN tasks t ON t.id = r.task_id \
                 WHERE t.id IS NULL OR t.state NOT IN ({}) ORDER BY r.id",
                COLUMNS
                    .split(", ")
                    .map(|c| format!("r.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                TaskState::RUNNING
                    .iter()
                    .map(|s| format!("'{}'", s.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await
    }

    async fn query(&self, action: &str, sql: &str) -> Result<Vec<VmRecord>, StateError> {
        on_pool!(self.state, action.to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn.rows(sql, params![]).await?;
            Ok(rows
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }
}
