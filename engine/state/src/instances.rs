//! Instances of deployments with their VMs, persistent disks and IP reservations; cloud and
//! runtime configs; and the director's store of deployment variables.
//!
//! An instance outlives its VMs. What the director last applied to an instance (stemcell,
//! VM settings, packages, rendered templates…) is kept as a JSON document (`observed`), the
//! "observed" side of the planner; rows of `vms`, `persistent_disks` and `ip_reservations`
//! hold what must stay unique across deployments (VM and disk ids, addresses).

use director_api::ConfigKind;
use serde_json::Value;

use super::sql::{Begin, Columns, Conn, params};
use super::{DeploymentId, Object, State, StateError, TaskId, Violation, now};

/// A row of `instances`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub i64);

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An instance as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: InstanceId,
    pub deployment_id: DeploymentId,
    pub instance_group: String,
    /// The instance's UUID (its `id` in BOSH's vocabulary).
    pub uuid: String,
    pub index: u32,
    pub az: Option<String>,
    /// `started`, `stopped` or `detached`.
    pub state: String,
    pub bootstrap: bool,
    /// What the director last applied (JSON), `None` before the first apply.
    pub observed: Option<Value>,
    /// False while an update is touching the instance (so an interrupted one is redone).
    pub update_completed: bool,
    pub vm: Option<Vm>,
    pub disk: Option<Disk>,
    /// `(network, address, static)`.
    pub ips: Vec<(String, String, bool)>,
}

impl Instance {
    /// `group/id (index)`, as task events name instances.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.instance_group, self.uuid, self.index)
    }
}

/// A VM of an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Vm {
    pub cid: String,
    pub agent_id: String,
    pub created_at: i64,
    pub env: Value,
}

/// A persistent disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    pub cid: String,
    pub size: u64,
    pub cloud_properties: Value,
    pub instance: Option<InstanceId>,
    pub orphaned_at: Option<i64>,
}

/// A new instance.
#[derive(Clone, Debug)]
pub struct NewInstance {
    pub deployment_id: DeploymentId,
    pub instance_group: String,
    pub uuid: String,
    pub index: u32,
    pub az: Option<String>,
    pub bootstrap: bool,
}

/// Instances, VMs, disks and IPs; see [`State::instances`].
#[derive(Clone, Copy, Debug)]
pub struct Instances<'a> {
    pub(super) state: &'a State,
}

fn instance_object(id: InstanceId) -> Object {
    Object::Row {
        kind: "instance",
        id: id.0,
    }
}

fn int_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

impl Instances<'_> {
    /// Every instance of a deployment, with its VM, disk and IPs, by group and index.
    pub async fn list(&self, deployment: DeploymentId) -> Result<Vec<Instance>, StateError> {
        self.list_with(deployment, true).await
    }

    /// [`Instances::list`] without what was applied (`observed` is `None`): the health
    /// monitor's view, read every few seconds, which needs no spec documents parsed.
    pub async fn list_without_specs(
        &self,
        deployment: DeploymentId,
    ) -> Result<Vec<Instance>, StateError> {
        self.list_with(deployment, false).await
    }

    async fn list_with(
        &self,
        deployment: DeploymentId,
        with_specs: bool,
    ) -> Result<Vec<Instance>, StateError> {
        let spec = if with_specs {
            "spec"
        } else {
            "CAST(NULL AS TEXT) AS spec"
        };
        on_pool!(
            self.state,
            format!("listing the instances of deployment {deployment}"),
            |pool| {
                let mut transaction = pool.begin_read().await?;
                let rows = transaction
                    .rows(
                        &format!(
                            "SELECT id, deployment_id, instance_group, uuid, instance_index, az, state, \
                             bootstrap, {spec}, update_completed FROM instances WHERE deployment_id = $1 \
                             ORDER BY instance_group, instance_index"
                        ),
                        params![deployment.0],
                    )
                    .await?;
                // Four queries whatever the size (not three per instance): the analysis
                // and every deploy list thousands of instances.
                let mut vms: std::collections::HashMap<i64, Vm> = transaction
                    .rows(
                        "SELECT v.instance_id, v.cid, v.agent_id, v.created_at, v.env FROM vms v \
                         JOIN instances i ON i.id = v.instance_id WHERE i.deployment_id = $1",
                        params![deployment.0],
                    )
                    .await?
                    .iter()
                    .map(|vm| -> Result<(i64, Vm), sqlx::Error> {
                        Ok((
                            vm.int("instance_id")?,
                            Vm {
                                cid: vm.text("cid")?,
                                agent_id: vm.text("agent_id")?,
                                created_at: vm.int("created_at")?,
                                env: vm.json("env")?,
                            },
                        ))
                    })
                    .collect::<Result<_, _>>()?;
                let mut disks: std::collections::HashMap<i64, Disk> = transaction
                    .rows(
                        "SELECT d.cid, d.size, d.cloud_properties, d.instance_id, d.orphaned_at \
                         FROM persistent_disks d JOIN instances i ON i.id = d.instance_id \
                         WHERE i.deployment_id = $1 AND d.active = TRUE",
                        params![deployment.0],
                    )
                    .await?
                    .iter()
                    .map(|disk| Ok((disk.int("instance_id")?, disk_from_row(disk)?)))
                    .collect::<Result<_, sqlx::Error>>()?;
                let mut ips: std::collections::HashMap<i64, Vec<(String, String, bool)>> =
                    std::collections::HashMap::new();
                for ip in transaction
                    .rows(
                        "SELECT r.instance_id, r.network, r.address, r.is_static FROM ip_reservations r \
                         JOIN instances i ON i.id = r.instance_id WHERE i.deployment_id = $1 \
                         ORDER BY r.network, r.id",
                        params![deployment.0],
                    )
                    .await?
                    .iter()
                {
                    ips.entry(ip.int("instance_id")?).or_default().push((
                        ip.text("network")?,
                        ip.text("address")?,
                        ip.flag("is_static")?,
                    ));
                }
                let mut instances = Vec::new();
                for row in &rows {
                    let id = InstanceId(row.int("id")?);
                    let observed: Option<String> = row.opt_text("spec")?;
                    instances.push(Instance {
                        id,
                        deployment_id: DeploymentId(row.int("deployment_id")?),
                        instance_group: row.text("instance_group")?,
                        uuid: row.text("uuid")?,
                        index: int_u32(row.int("instance_index")?),
                        az: row.opt_text("az")?,
                        state: row.text("state")?,
                        bootstrap: row.flag("bootstrap")?,
                        observed: observed.and_then(|text| serde_json::from_str(&text).ok()),
                        update_completed: row.flag("update_completed")?,
                        vm: vms.remove(&id.0),
                        disk: disks.remove(&id.0),
                        ips: ips.remove(&id.0).unwrap_or_default(),
                    });
                }
                transaction.commit().await?;
                Ok(instances)
            }
        )
    }

    /// Records a new instance (state `started`, update not completed).
    pub async fn create(&self, new: &NewInstance) -> Result<InstanceId, StateError> {
        let object = || Object::Row {
            kind: "instance index",
            id: i64::from(new.index),
        };
        on_pool!(
            self.state,
            format!("recording instance {}/{}", new.instance_group, new.uuid),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                .row(
                    "INSERT INTO instances (deployment_id, instance_group, uuid, instance_index, az, state, \
                     bootstrap, update_completed) VALUES ($1, $2, $3, $4, $5, 'started', $6, FALSE) RETURNING id",
                    params![new.deployment_id.0, &new.instance_group, &new.uuid, i64::from(new.index), new.az.as_deref(), new.bootstrap],
                )
                .await
                .exists_as(object)?;
                Ok(InstanceId(row.int("id")?))
            }
        )
    }

    /// Records what was applied to an instance and whether the update completed.
    pub async fn set_observed(
        &self,
        id: InstanceId,
        observed: &Value,
        update_completed: bool,
    ) -> Result<(), StateError> {
        let text = observed.to_string();
        self.state
            .execute(
                || format!("recording the state of {}", instance_object(id)),
                "UPDATE instances SET spec = $1, update_completed = $2 WHERE id = $3",
                params![text.as_str(), update_completed, id.0],
            )
            .await
    }

    /// Marks an instance's update as started (`false`) or finished (`true`).
    pub async fn set_update_completed(
        &self,
        id: InstanceId,
        completed: bool,
    ) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("marking {}", instance_object(id)),
                "UPDATE instances SET update_completed = $1 WHERE id = $2",
                params![completed, id.0],
            )
            .await
    }

    /// Sets the desired state (`started`, `stopped`, `detached`) and bootstrap flag.
    pub async fn set_state(
        &self,
        id: InstanceId,
        state: &str,
        bootstrap: bool,
    ) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("setting the state of {}", instance_object(id)),
                "UPDATE instances SET state = $1, bootstrap = $2 WHERE id = $3",
                params![state, bootstrap, id.0],
            )
            .await
    }

    /// Records the VM of an instance (replacing a previous record); the VM's record among
    /// those no instance owns ([`State::vm_records`]) goes in the same transaction.
    pub async fn set_vm(&self, id: InstanceId, vm: &Vm) -> Result<(), StateError> {
        let env = vm.env.to_string();
        on_pool!(
            self.state,
            format!("recording VM {} of {}", vm.cid, instance_object(id)),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run("DELETE FROM vms WHERE instance_id = $1", params![id.0])
                    .await?;
                transaction
                .run(
                    "INSERT INTO vms (cid, agent_id, instance_id, created_at, env) VALUES ($1, $2, $3, $4, $5)",
                    params![&vm.cid, &vm.agent_id, id.0, vm.created_at, env.as_str()],
                )
                .await
                .exists_as(|| Object::Row { kind: "vm of instance", id: id.0 })?;
                transaction
                    .run(
                        "DELETE FROM vm_records WHERE agent_id = $1",
                        params![&vm.agent_id],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Forgets an instance's VM (after the CPI deleted it).
    pub async fn clear_vm(&self, id: InstanceId) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("forgetting the VM of {}", instance_object(id)),
                "DELETE FROM vms WHERE instance_id = $1",
                params![id.0],
            )
            .await
    }

    /// Forgets an instance's VM without deleting it (cck's `delete_vm_reference`): in one
    /// transaction the VM becomes a record no instance owns ([`State::vm_records`], state
    /// `created`, made by `task`), so it is still listed and `cck` can delete it later.
    pub async fn disown_vm(
        &self,
        id: InstanceId,
        label: &str,
        task: Option<TaskId>,
    ) -> Result<(), StateError> {
        let time = now();
        on_pool!(
            self.state,
            format!(
                "forgetting the VM of {} (kept as unowned)",
                instance_object(id)
            ),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let moved = transaction
                    .run(
                        "INSERT INTO vm_records (agent_id, cid, state, purpose, label, deployment_id, \
                         instance_id, task_id, addresses, created_at) \
                         SELECT v.agent_id, v.cid, 'created', 'instance', CAST($1 AS TEXT), i.deployment_id, \
                         NULL, CAST($2 AS BIGINT), '[]', CAST($3 AS BIGINT) \
                         FROM vms v JOIN instances i ON i.id = v.instance_id WHERE v.instance_id = $4",
                        params![label, task.map(|t| t.0), time, id.0],
                    )
                    .await?;
                if moved != 1 {
                    return Err(StateError::NotFound {
                        object: Object::Row {
                            kind: "vm of instance",
                            id: id.0,
                        },
                    }
                    .into());
                }
                transaction
                    .run("DELETE FROM vms WHERE instance_id = $1", params![id.0])
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Records a new persistent disk of an instance: `active`, the one it uses; otherwise
    /// one being made for it (the target of a disk migration) that
    /// [`Instances::activate_disk`] later makes the one it uses.
    pub async fn add_disk(
        &self,
        id: InstanceId,
        cid: &str,
        size: u64,
        cloud_properties: &Value,
        active: bool,
    ) -> Result<(), StateError> {
        let properties = cloud_properties.to_string();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        on_pool!(
            self.state,
            format!("recording disk {cid} of {}", instance_object(id)),
            |pool| {
                let mut conn = pool.acquire().await?;
                conn.run(
                "INSERT INTO persistent_disks (cid, instance_id, size, cloud_properties, active) VALUES ($1, $2, $3, $4, $5)",
                params![cid, id.0, size, properties.as_str(), active],
            )
            .await
            .exists_as(|| Object::Row { kind: "disk of instance", id: id.0 })?;
                Ok(())
            }
        )
    }

    /// Makes the instance's inactive disk `cid` the one it uses and orphans the one it used,
    /// in one transaction.
    pub async fn activate_disk(&self, id: InstanceId, cid: &str) -> Result<(), StateError> {
        let time = now();
        on_pool!(
            self.state,
            format!("switching {} to disk {cid}", instance_object(id)),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "UPDATE persistent_disks SET instance_id = NULL, active = FALSE, orphaned_at = $1 \
                         WHERE instance_id = $2 AND active = TRUE",
                        params![time, id.0],
                    )
                    .await?;
                transaction
                    .run(
                        "UPDATE persistent_disks SET active = TRUE WHERE cid = $1 AND instance_id = $2",
                        params![cid, id.0],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// The inactive disks of an instance (left by a migration that did not finish).
    pub async fn inactive_disks(&self, id: InstanceId) -> Result<Vec<Disk>, StateError> {
        on_pool!(
            self.state,
            format!("listing the inactive disks of {}", instance_object(id)),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                    .rows(
                        "SELECT cid, size, cloud_properties, instance_id, orphaned_at FROM persistent_disks \
                         WHERE instance_id = $1 AND active = FALSE ORDER BY id",
                        params![id.0],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(disk_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Orphans a disk: it stays (with its data) until deleted, attached to nothing.
    pub async fn orphan_disk(&self, cid: &str) -> Result<(), StateError> {
        let time = now();
        self.state
            .execute(|| format!("orphaning disk {cid}"), "UPDATE persistent_disks SET instance_id = NULL, active = FALSE, orphaned_at = $1 WHERE cid = $2", params![time, cid])
            .await
    }

    /// Orphaned disks, newest first.
    pub async fn orphaned_disks(&self) -> Result<Vec<Disk>, StateError> {
        on_pool!(self.state, "listing orphaned disks".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn
                .rows(
                    "SELECT cid, size, cloud_properties, instance_id, orphaned_at FROM persistent_disks \
                     WHERE orphaned_at IS NOT NULL ORDER BY orphaned_at DESC, id DESC",
                    params![],
                )
                .await?;
            Ok(rows
                .iter()
                .map(disk_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// Forgets a disk (after the CPI deleted it).
    pub async fn delete_disk(&self, cid: &str) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("forgetting disk {cid}"),
                "DELETE FROM persistent_disks WHERE cid = $1",
                params![cid],
            )
            .await
    }

    /// Every address reserved on `network`, by any deployment.
    pub async fn reserved_addresses(&self, network: &str) -> Result<Vec<String>, StateError> {
        on_pool!(
            self.state,
            format!("listing addresses of network '{network}'"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                    .rows(
                        "SELECT address FROM ip_reservations WHERE network = $1",
                        params![network],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| r.text("address"))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Sets an instance's addresses to exactly `ips` (`(network, address, static)`), in one
    /// transaction; an address another instance holds is [`StateError::AlreadyExists`].
    pub async fn set_ips(
        &self,
        deployment: DeploymentId,
        id: InstanceId,
        ips: &[(String, String, bool)],
    ) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!("reserving the addresses of {}", instance_object(id)),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "DELETE FROM ip_reservations WHERE instance_id = $1",
                        params![id.0],
                    )
                    .await?;
                for (network, address, is_static) in ips {
                    transaction
                    .run(
                        "INSERT INTO ip_reservations (deployment_id, network, address, instance_id, is_static) \
                         VALUES ($1, $2, $3, $4, $5)",
                        params![deployment.0, network.as_str(), address.as_str(), id.0, *is_static],
                    )
                    .await
                    .exists_as(|| Object::Address { network: network.clone(), address: address.clone() })?;
                }
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Deletes an instance and its IP reservations (its VM must be gone and its disk
    /// orphaned first).
    pub async fn delete(&self, id: InstanceId) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!("deleting {}", instance_object(id)),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "DELETE FROM ip_reservations WHERE instance_id = $1",
                        params![id.0],
                    )
                    .await?;
                transaction
                    .run(
                        "DELETE FROM rendered_templates WHERE instance_id = $1",
                        params![id.0],
                    )
                    .await?;
                transaction
                    .run("DELETE FROM vms WHERE instance_id = $1", params![id.0])
                    .await?;
                transaction
                    .run("DELETE FROM instances WHERE id = $1", params![id.0])
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Deletes a deployment row and what hangs off it (instances must be gone).
    pub async fn delete_deployment(&self, deployment: DeploymentId) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!("deleting deployment {deployment}"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "DELETE FROM ip_reservations WHERE deployment_id = $1",
                        params![deployment.0],
                    )
                    .await?;
                transaction
                    .run(
                        "DELETE FROM deployments WHERE id = $1",
                        params![deployment.0],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// The latest content of config `(kind, name)` (`cloud`/`runtime`, `default`); the
    /// kind is stored as its text.
    pub async fn config(
        &self,
        kind: ConfigKind,
        name: &str,
    ) -> Result<Option<(i64, String)>, StateError> {
        let kind = kind.as_str();
        on_pool!(self.state, format!("reading the {kind} config"), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .maybe_row(
                    "SELECT id, content FROM configs WHERE type = $1 AND name = $2 ORDER BY id DESC LIMIT 1",
                    params![kind, name],
                )
                .await?;
            Ok(row
                .map(|r| -> Result<(i64, String), sqlx::Error> {
                    Ok((r.int("id")?, r.text("content")?))
                })
                .transpose()?)
        })
    }

    /// Records a new version of config `(kind, name)`.
    pub async fn set_config(
        &self,
        kind: ConfigKind,
        name: &str,
        content: &str,
    ) -> Result<i64, StateError> {
        let kind = kind.as_str();
        let time = now();
        on_pool!(self.state, format!("recording the {kind} config"), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .row(
                    "INSERT INTO configs (type, name, content, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                    params![kind, name, content, time],
                )
                .await?;
            Ok(row.int("id")?)
        })
    }

    /// A deployment variable's value from the director's store.
    pub async fn credential(
        &self,
        deployment: DeploymentId,
        name: &str,
    ) -> Result<Option<Value>, StateError> {
        on_pool!(self.state, format!("reading variable '{name}'"), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .maybe_row(
                    "SELECT value FROM credentials WHERE deployment_id = $1 AND name = $2",
                    params![deployment.0, name],
                )
                .await?;
            Ok(row.map(|r| r.json::<Value>("value")).transpose()?)
        })
    }

    /// Replaces the rendered templates recorded for an instance: `(job, blob id)`.
    pub async fn set_rendered(
        &self,
        id: InstanceId,
        rendered: &[(String, String)],
    ) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!(
                "recording the rendered templates of {}",
                instance_object(id)
            ),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "DELETE FROM rendered_templates WHERE instance_id = $1",
                        params![id.0],
                    )
                    .await?;
                for (job, blob) in rendered {
                    transaction
                    .run(
                        "INSERT INTO rendered_templates (instance_id, job, blob_id) VALUES ($1, $2, $3)",
                        params![id.0, job.as_str(), blob.as_str()],
                    )
                    .await
                    .missing_as(|| Object::Blob { id: blob.clone() })?;
                }
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Every variable of a deployment in the director's store, by name.
    pub async fn credentials(
        &self,
        deployment: DeploymentId,
    ) -> Result<Vec<(String, Value)>, StateError> {
        on_pool!(
            self.state,
            format!("reading the variables of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                .rows("SELECT name, value FROM credentials WHERE deployment_id = $1 ORDER BY name", params![deployment.0])
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.text("name")?, r.json::<Value>("value")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Every address reserved by deployments other than `deployment`, and every address a
    /// recorded VM holds (a compilation VM a director that died left): `(network, address)`.
    pub async fn addresses_outside(
        &self,
        deployment: Option<DeploymentId>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let id = deployment.map_or(-1, |d| d.0);
        on_pool!(
            self.state,
            "listing reserved addresses".to_string(),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                    .rows(
                        "SELECT network, address FROM ip_reservations \
                         WHERE deployment_id <> $1 OR vm_record_id IS NOT NULL",
                        params![id],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.text("network")?, r.text("address")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Reserves an address for something that is not an instance (a compilation VM);
    /// [`StateError::AlreadyExists`] when anyone holds it.
    pub async fn reserve_address(
        &self,
        deployment: DeploymentId,
        network: &str,
        address: &str,
    ) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!("reserving address {address} on network '{network}'"),
            |pool| {
                let mut conn = pool.acquire().await?;
                conn.run(
                "INSERT INTO ip_reservations (deployment_id, network, address, instance_id, is_static) \
                 VALUES ($1, $2, $3, NULL, $4)",
                params![deployment.0, network, address, false],
            )
            .await
            .exists_as(|| Object::Address { network: network.to_string(), address: address.to_string() })?;
                Ok(())
            }
        )
    }

    /// Releases an address [`Instances::reserve_address`] reserved, unless a recorded VM
    /// holds it (then it goes with that VM's record).
    pub async fn release_address(&self, network: &str, address: &str) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("releasing address {address} on network '{network}'"),
                "DELETE FROM ip_reservations WHERE network = $1 AND address = $2 \
                 AND instance_id IS NULL AND vm_record_id IS NULL",
                params![network, address],
            )
            .await
    }

    /// Releases the addresses a deployment reserved for no instance and no recorded VM
    /// (a deploy interrupted before its compilation VM was recorded); call under the
    /// deployment's lock. Addresses a recorded VM holds stay until its record goes.
    pub async fn release_unowned_addresses(
        &self,
        deployment: DeploymentId,
    ) -> Result<u64, StateError> {
        on_pool!(
            self.state,
            format!("releasing the unowned addresses of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let released = conn
                .run(
                    "DELETE FROM ip_reservations WHERE deployment_id = $1 AND instance_id IS NULL \
                     AND vm_record_id IS NULL",
                    params![deployment.0],
                )
                .await?;
                Ok(released)
            }
        )
    }

    /// Every address reserved on any network: `(network, address)`.
    pub async fn all_addresses(&self) -> Result<Vec<(String, String)>, StateError> {
        self.addresses_outside(None).await
    }

    /// What a deployment provides through links (JSON), if recorded.
    pub async fn links(&self, deployment: DeploymentId) -> Result<Option<Value>, StateError> {
        on_pool!(
            self.state,
            format!("reading the links of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .maybe_row(
                        "SELECT content FROM deployment_links WHERE deployment_id = $1",
                        params![deployment.0],
                    )
                    .await?;
                Ok(row.map(|r| r.json::<Value>("content")).transpose()?)
            }
        )
    }

    /// Replaces what a deployment provides through links.
    pub async fn set_links(
        &self,
        deployment: DeploymentId,
        links: &Value,
    ) -> Result<(), StateError> {
        let text = links.to_string();
        on_pool!(
            self.state,
            format!("recording the links of deployment {deployment}"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                transaction
                    .run(
                        "DELETE FROM deployment_links WHERE deployment_id = $1",
                        params![deployment.0],
                    )
                    .await?;
                transaction
                    .run(
                        "INSERT INTO deployment_links (deployment_id, content) VALUES ($1, $2)",
                        params![deployment.0, text.as_str()],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Stores a deployment variable's value (an existing value is kept: returns false).
    pub async fn put_credential(
        &self,
        deployment: DeploymentId,
        name: &str,
        value: &Value,
    ) -> Result<bool, StateError> {
        let text = value.to_string();
        let time = now();
        on_pool!(self.state, format!("storing variable '{name}'"), |pool| {
            let mut conn = pool.acquire().await?;
            let inserted = conn
                .run(
                    "INSERT INTO credentials (deployment_id, name, value, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (deployment_id, name) DO NOTHING",
                    params![deployment.0, name, text.as_str(), time],
                )
                .await?;
            Ok(inserted > 0)
        })
    }
}

fn disk_from_row(row: &impl Columns) -> Result<Disk, sqlx::Error> {
    Ok(Disk {
        cid: row.text("cid")?,
        size: row.size("size")?,
        cloud_properties: row.json("cloud_properties")?,
        instance: row.opt_int("instance_id")?.map(InstanceId),
        orphaned_at: row.opt_int("orphaned_at")?,
    })
}
