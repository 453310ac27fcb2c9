//! Agent accounts on a real nats-server (`mbus` in `director.yml`).
//!
//! nats-server has no API to add users, so the director owns one authorization file, which
//! the operator includes from `nats-server.conf`:
//!
//! ```text
//! # nats-server.conf
//! pid_file: "/run/nats/nats.pid"
//! include "director-users.conf"
//! ```
//!
//! The file holds the director's user (allowed everything) and one user per agent with the
//! permissions of [`agent_permissions`]. Every change rewrites it atomically (temporary file,
//! fsync, rename; an existing file's mode and group are kept, less any access for others)
//! and sends nats-server `SIGHUP` (`kill -HUP` of the pid in `mbus.pid_file`), on which it
//! reloads its users, applies new permissions to connected clients and disconnects removed
//! ones. After adding an agent the director connects once as that agent, to be sure the
//! reload took: otherwise the agent would just never answer.
//!
//! The file is read back when the director starts (the agents it lists keep their
//! passwords), so it is the record of the agents' accounts. One user per line, each line a
//! JSON object (nats-server's configuration syntax accepts JSON), which keeps reading it
//! back trivial.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::accounts::{
    AgentAccounts, AgentCredentials, Permissions, agent_permissions, agent_user, check_agent_id,
    generate_password,
};
use crate::error::BusError;

/// How long nats-server gets to take up a new user after the reload signal.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// `mbus`: the nats-server the director and its agents share. The director writes agent
/// users into `authorization_file` (which `nats-server.conf` includes) and signals the
/// process in `pid_file` to reload it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MbusConfig {
    /// Where the director connects: `nats://host:4222`.
    pub url: String,
    /// What agents are told, when they reach the bus at another address (default `url`).
    #[serde(default)]
    pub agent_url: Option<String>,
    /// The director's user.
    pub user: String,
    /// The director's password.
    pub password: String,
    /// The users file the director owns; nats-server must be able to read it (a new file is
    /// 0600, a replaced one keeps its mode and group, never readable by others).
    pub authorization_file: PathBuf,
    /// nats-server's `pid_file`.
    pub pid_file: PathBuf,
}

impl std::fmt::Debug for MbusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbusConfig")
            .field("url", &secrets::redact_urls(&self.url))
            .field(
                "agent_url",
                &self.agent_url.as_deref().map(secrets::redact_urls),
            )
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("authorization_file", &self.authorization_file)
            .field("pid_file", &self.pid_file)
            .finish()
    }
}

/// Agent accounts kept in a nats-server authorization file.
pub struct NatsServerAccounts {
    /// Where the director connects (checking a new account).
    url: String,
    /// What agents are told.
    agent_url: String,
    director_user: String,
    director_password: String,
    authorization_file: PathBuf,
    pid_file: PathBuf,
    /// Agent id → password. The lock also serializes rewrites of the file.
    agents: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for NatsServerAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServerAccounts")
            .field("url", &secrets::redact_urls(&self.url))
            .field("authorization_file", &self.authorization_file)
            .field("pid_file", &self.pid_file)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct FileUser {
    user: String,
    password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permissions: Option<FilePermissions>,
}

#[derive(Serialize, Deserialize)]
struct FilePermissions {
    publish: Allow,
    subscribe: Allow,
}

#[derive(Serialize, Deserialize)]
struct Allow {
    allow: Vec<String>,
}

impl NatsServerAccounts {
    /// Reads the agents already in the authorization file and makes sure the file holds the
    /// director's user as configured. When the file changed and nats-server runs (its pid
    /// file exists), nats-server reloads it; otherwise it reads it when it starts.
    pub async fn open(config: &MbusConfig) -> Result<NatsServerAccounts, BusError> {
        check_config_string("user", &config.user)?;
        check_config_string("password", &config.password)?;
        if config.user.starts_with("agent-") {
            return Err(BusError::Settings(format!(
                "user '{}' starts with 'agent-', which names agents' users: choose another name",
                config.user
            )));
        }
        let path = &config.authorization_file;
        let existing = match tokio::fs::read_to_string(path).await {
            Ok(text) => Some(text),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(BusError::AuthorizationFile {
                    action: "read",
                    path: path.clone(),
                    detail: error.to_string(),
                });
            }
        };
        let agents = match &existing {
            Some(text) => read_agents(text).map_err(|detail| BusError::AuthorizationFile {
                action: "read",
                path: path.clone(),
                detail,
            })?,
            None => BTreeMap::new(),
        };
        let accounts = NatsServerAccounts {
            url: config.url.clone(),
            agent_url: strip_credentials(config.agent_url.as_deref().unwrap_or(&config.url)),
            director_user: config.user.clone(),
            director_password: config.password.clone(),
            authorization_file: path.clone(),
            pid_file: config.pid_file.clone(),
            agents: tokio::sync::Mutex::new(BTreeMap::new()),
        };
        let text = accounts.render(&agents);
        if existing.as_deref() != Some(text.as_str()) {
            accounts.write(text).await?;
            if tokio::fs::try_exists(&accounts.pid_file)
                .await
                .unwrap_or(false)
            {
                accounts.reload().await?;
            }
        }
        *accounts.agents.lock().await = agents;
        Ok(accounts)
    }

    /// The agents with an account.
    pub async fn agents(&self) -> Vec<String> {
        self.agents.lock().await.keys().cloned().collect()
    }

    fn render(&self, agents: &BTreeMap<String, String>) -> String {
        let mut text = String::from(
            "# Written by the director (mbus.authorization_file): the bus users of the director\n\
             # and of its agents. nats-server.conf includes it; the director rewrites it and\n\
             # signals nats-server to reload whenever an agent is added or removed. Do not edit.\n\
             authorization {\n  users = [\n",
        );
        let director = FileUser {
            user: self.director_user.clone(),
            password: self.director_password.clone(),
            permissions: None,
        };
        let line = |user: &FileUser| {
            // Serializing these plain structs cannot fail.
            serde_json::to_string(user).unwrap_or_default()
        };
        text.push_str(&format!("    {},\n", line(&director)));
        for (agent_id, password) in agents {
            let Permissions { publish, subscribe } = agent_permissions(agent_id);
            let user = FileUser {
                user: agent_user(agent_id),
                password: password.clone(),
                permissions: Some(FilePermissions {
                    publish: Allow {
                        allow: publish.unwrap_or_default(),
                    },
                    subscribe: Allow {
                        allow: subscribe.unwrap_or_default(),
                    },
                }),
            };
            text.push_str(&format!("    {},\n", line(&user)));
        }
        text.push_str("  ]\n}\n");
        text
    }

    async fn write(&self, text: String) -> Result<(), BusError> {
        let path = self.authorization_file.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        written.map_err(|error| BusError::AuthorizationFile {
            action: "write",
            path: self.authorization_file.clone(),
            detail: error.to_string(),
        })
    }

    async fn reload(&self) -> Result<(), BusError> {
        let failed = |detail: String| BusError::Reload {
            pid_file: self.pid_file.clone(),
            detail,
        };
        let text = tokio::fs::read_to_string(&self.pid_file)
            .await
            .map_err(|e| {
                failed(format!(
                    "cannot read the pid file: {e}; is nats-server running with `pid_file: \"{}\"`?",
                    self.pid_file.display()
                ))
            })?;
        let pid: u32 = text
            .trim()
            .parse()
            .ok()
            .filter(|pid| *pid > 1)
            .ok_or_else(|| failed(format!("the pid file holds '{}', not a pid", text.trim())))?;
        let output = tokio::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .output()
            .await
            .map_err(|e| failed(format!("cannot run kill: {e}")))?;
        if !output.status.success() {
            return Err(failed(format!(
                "kill -HUP {pid} failed ({}): {}; is nats-server running?",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Connects as the new user until nats-server accepts it (it reloads asynchronously).
    async fn wait_until_accepted(&self, credentials: &AgentCredentials) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        let mut last_error = String::new();
        while tokio::time::Instant::now() < deadline {
            let options = async_nats::ConnectOptions::with_user_and_password(
                credentials.user.clone(),
                credentials.password.clone(),
            )
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(Some(1));
            match options.connect(self.url.as_str()).await {
                Ok(client) => {
                    let _ = client.drain().await;
                    return Ok(());
                }
                Err(error) => last_error = secrets::redact_urls(&error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BusError::Reload {
            pid_file: self.pid_file.clone(),
            detail: format!(
                "nats-server still refuses the new user '{}' {} s after the reload ({last_error}): check its log, and that its configuration includes {}",
                credentials.user,
                RELOAD_WAIT.as_secs(),
                self.authorization_file.display()
            ),
        })
    }
}

impl AgentAccounts for NatsServerAccounts {
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            let credentials = AgentCredentials {
                user: agent_user(agent_id),
                password: generate_password(),
                url: self.agent_url.clone(),
            };
            let mut agents = self.agents.lock().await;
            let previous = agents.insert(agent_id.to_string(), credentials.password.clone());
            let applied = async {
                self.write(self.render(&agents)).await?;
                self.reload().await
            }
            .await;
            if let Err(error) = applied {
                match previous {
                    Some(password) => agents.insert(agent_id.to_string(), password),
                    None => agents.remove(agent_id),
                };
                return Err(error);
            }
            drop(agents);
            self.wait_until_accepted(&credentials).await?;
            Ok(credentials)
        })
    }

    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            let mut agents = self.agents.lock().await;
            let Some(previous) = agents.remove(agent_id) else {
                return Ok(());
            };
            let applied = async {
                self.write(self.render(&agents)).await?;
                self.reload().await
            }
            .await;
            if let Err(error) = applied {
                agents.insert(agent_id.to_string(), previous);
                return Err(error);
            }
            Ok(())
        })
    }
}

/// The agents (id → password) in a file this module wrote.
fn read_agents(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut agents = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with("{\"user\":") {
            continue;
        }
        let user: FileUser = serde_json::from_str(line.trim_end_matches(',')).map_err(|e| {
            format!(
                "line {}: {e} (the director writes this file; do not edit it)",
                number + 1
            )
        })?;
        if let Some(agent_id) = user.user.strip_prefix("agent-") {
            agents.insert(agent_id.to_string(), user.password);
        }
    }
    Ok(agents)
}

/// A user or password that goes into the file between quotes, and into `CONNECT`.
fn check_config_string(field: &str, value: &str) -> Result<(), BusError> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(BusError::Settings(format!(
            "{field} must be non-empty, without quotes, backslashes or control characters"
        )));
    }
    Ok(())
}

fn strip_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// The one atomic write (`secrets`). A new file is 0600; a replaced one keeps its mode (less
/// any access for others: it holds passwords) and group, so an operator can let a
/// nats-server running as another user read it through a group.
fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let existing = std::fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map_or(0o600, |existing| existing.mode() & 0o770);
    secrets::write_atomic_with(path, mode, |file| {
        if let Some(existing) = &existing
            && file.metadata()?.gid() != existing.gid()
        {
            std::os::unix::fs::fchown(&*file, None, Some(existing.gid()))?;
        }
        file.write_all(content)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> MbusConfig {
        MbusConfig {
            url: "nats://127.0.0.1:4222".into(),
            agent_url: None,
            user: "director".into(),
            password: "director-secret".into(),
            authorization_file: dir.join("users.conf"),
            pid_file: dir.join("nats.pid"),
        }
    }

    #[tokio::test]
    async fn the_file_lists_every_user_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = NatsServerAccounts::open(&config(dir.path())).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("users.conf")).unwrap();
        assert!(
            text.contains(r#"{"user":"director","password":"director-secret"},"#),
            "{text}"
        );

        let mut agents = BTreeMap::new();
        agents.insert("a1".to_string(), "p1".to_string());
        agents.insert("a2".to_string(), "p2".to_string());
        let text = accounts.render(&agents);
        assert!(text.contains(r#"{"user":"agent-a1","password":"p1","permissions":{"publish":{"allow":["hm.agent.heartbeat.a1","hm.agent.alert.a1","hm.agent.shutdown.a1","director.*.a1.*"]},"subscribe":{"allow":["agent.a1"]}}},"#), "{text}");
        assert_eq!(read_agents(&text).unwrap(), agents);

        std::fs::write(dir.path().join("users.conf"), &text).unwrap();
        let reopened = NatsServerAccounts::open(&config(dir.path())).await.unwrap();
        assert_eq!(reopened.agents().await, ["a1", "a2"]);
    }

    #[tokio::test]
    async fn without_nats_server_adding_an_agent_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = NatsServerAccounts::open(&config(dir.path())).await.unwrap();
        let error = accounts.add_agent("a1").await.unwrap_err().to_string();
        assert!(error.contains("cannot make nats-server reload"), "{error}");
        assert!(
            error.contains("is nats-server running with `pid_file"),
            "{error}"
        );
        assert!(accounts.agents().await.is_empty());
    }

    #[test]
    fn settings_are_checked() {
        assert!(check_config_string("password", "a\"b").is_err());
        assert!(check_config_string("password", "").is_err());
        assert_eq!(
            strip_credentials("nats://u:p@host:4222"),
            "nats://host:4222"
        );
    }

    #[cfg(unix)]
    #[test]
    fn rewrites_keep_the_mode_but_never_for_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        write_atomically(&path, b"one").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }
}
