//! Agent accounts on the embedded broker: [`BrokerHandle`] gives them for a director that
//! forgets them when it stops, [`PersistentBroker`] records them in a file for a dev
//! director whose VMs outlive it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::accounts::{
    AgentAccounts, AgentCredentials, agent_permissions, agent_user, check_agent_id,
    generate_password,
};
use crate::broker::BrokerHandle;
use crate::error::BusError;

impl AgentAccounts for BrokerHandle {
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            let credentials = AgentCredentials {
                user: agent_user(agent_id),
                password: generate_password(),
                url: self.url(),
            };
            self.add_user(
                &credentials.user,
                &credentials.password,
                agent_permissions(agent_id),
            );
            Ok(credentials)
        })
    }

    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            self.remove_user(&agent_user(agent_id));
            Ok(())
        })
    }
}

/// Agent accounts on the embedded broker, kept in a file (mode 0600) beside the broker's
/// port, so that a restarted dev director's broker listens where its agents reconnect and
/// lets them back in: running VMs survive `stop-server`.
pub struct PersistentBroker {
    broker: BrokerHandle,
    file: PathBuf,
    /// Agent id → password. The lock is held from the change until the file holds it, so
    /// saves land in the order of the changes: VMs are created in parallel, and a save of an
    /// older map landing last would lose an agent's account across a restart.
    accounts: Arc<tokio::sync::Mutex<BTreeMap<String, String>>>,
}

impl PersistentBroker {
    /// The accounts recorded in `file` (none when it is missing or unreadable), let back
    /// into `broker`.
    pub(crate) fn open(broker: BrokerHandle, file: PathBuf) -> PersistentBroker {
        let accounts: BTreeMap<String, String> = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        for (agent_id, password) in &accounts {
            if check_agent_id(agent_id).is_ok() {
                broker.add_user(&agent_user(agent_id), password, agent_permissions(agent_id));
            }
        }
        PersistentBroker {
            broker,
            file,
            accounts: Arc::new(tokio::sync::Mutex::new(accounts)),
        }
    }

    /// Applies `change` to the accounts and writes them to the file, holding the lock until
    /// the file is written. The write runs on a blocking thread (it syncs the file and its
    /// directory), which owns the lock: a caller that gives up waiting cannot let another
    /// save overtake this one.
    async fn change_and_save(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<(), BusError> {
        let mut accounts = self.accounts.clone().lock_owned().await;
        if !change(&mut accounts) {
            return Ok(());
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_string(&*accounts).unwrap_or_default();
            secrets::write_private(&file, text.as_bytes())
        })
        .await
        .unwrap_or_else(|join_error| Err(std::io::Error::other(join_error.to_string())));
        written.map_err(|e| {
            BusError::Settings(format!(
                "cannot record the agents' bus accounts in {}: {e}",
                self.file.display()
            ))
        })
    }
}

impl AgentAccounts for PersistentBroker {
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>> {
        Box::pin(async move {
            let credentials = self.broker.add_agent(agent_id).await?;
            self.change_and_save(|accounts| {
                accounts.insert(agent_id.to_string(), credentials.password.clone());
                true
            })
            .await?;
            Ok(credentials)
        })
    }

    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.broker.remove_agent(agent_id).await?;
            self.change_and_save(|accounts| accounts.remove(agent_id).is_some())
                .await
        })
    }
}
