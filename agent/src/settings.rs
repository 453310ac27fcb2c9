//! The settings file the CPI writes (`Settings`), the agent's tunables, and the bus URL.
//!
//! The file is read again whenever a disk hint is needed (the CPI may add one after the
//! agent started) and `update_settings` merges a (partial) document into it: top-level keys
//! are replaced, others kept, and the result written atomically. The bus password never
//! leaves this module unredacted except to the NATS client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use agent_protocol::Settings;

/// The settings file.
#[derive(Clone, Debug)]
pub struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> SettingsFile {
        SettingsFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses it.
    pub fn load(&self) -> Result<Settings> {
        let raw = self.load_raw()?;
        serde_json::from_value(raw).map_err(|e| self.error(e.to_string()))
    }

    fn load_raw(&self) -> Result<Value> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.error(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| self.error(e.to_string()))?;
        if !value.is_object() {
            return Err(self.error("not a JSON object".to_string()));
        }
        Ok(value)
    }

    /// Merges `partial` (an object) into the file and returns the new settings. The agent id
    /// cannot change.
    pub fn update(&self, partial: &Value) -> Result<Settings> {
        let Value::Object(partial) = partial else {
            return Err(Error::arguments("update_settings", "expected an object"));
        };
        let mut raw = self.load_raw()?;
        let current_id = raw.get("agent_id").cloned();
        if let Some(new_id) = partial.get("agent_id")
            && Some(new_id) != current_id.as_ref()
        {
            return Err(Error::arguments(
                "update_settings",
                "the agent id cannot change",
            ));
        }
        let object = raw.as_object_mut().expect("checked in load_raw");
        for (key, value) in partial {
            object.insert(key.clone(), value.clone());
        }
        let settings: Settings =
            serde_json::from_value(raw.clone()).map_err(|e| self.error(e.to_string()))?;
        let text = serde_json::to_vec_pretty(&raw).expect("JSON values serialize");
        write_atomically(&self.path, &text)?;
        Ok(settings)
    }

    fn error(&self, reason: String) -> Error {
        Error::Settings {
            path: self.path.clone(),
            reason,
        }
    }
}

/// The agent's one atomic write of its own records (settings, desired state, applied spec,
/// mounted disk): [`secrets::write_private`], since the settings hold the bus password.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    secrets::write_private(path, contents).map_err(Error::io("write", path))
}

/// The bus URL split into what the NATS client needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Mbus {
    /// `nats://host:port` without credentials.
    pub address: String,
    /// The user, when the URL has one.
    pub user: Option<String>,
    /// The password, when the URL has one.
    pub password: Option<String>,
}

impl std::fmt::Debug for Mbus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbus")
            .field("address", &self.address)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Splits `nats://user:password@host:port` (percent-encoded credentials are decoded).
pub fn parse_mbus(url: &str) -> Mbus {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (&url[..at + 3], &url[at + 3..]),
        None => ("nats://", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let credentials = &authority[..at];
            let host = &authority[at + 1..];
            let (user, password) = match credentials.find(':') {
                Some(colon) => (
                    percent_decode(&credentials[..colon]),
                    Some(percent_decode(&credentials[colon + 1..])),
                ),
                None => (percent_decode(credentials), None),
            };
            Mbus {
                address: format!("{scheme}{host}{path}"),
                user: Some(user),
                password,
            }
        }
        None => Mbus {
            address: url.to_string(),
            user: None,
            password: None,
        },
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// How `mount_disk` makes `<root>/store` show a disk's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskStrategy {
    /// `mount --bind` (root, in a private mount namespace: the local CPI runs us so).
    Bind,
    /// A symlink `<root>/store` → the disk's directory.
    Symlink,
}

/// Numbers the agent works with, from the settings' `env.bosh.agent` first, then the
/// agent's environment (`BOSH_AGENT_*`), then defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// How long `stop` waits after the shutdown signal before killing (20 s;
    /// `stop_grace_seconds`, `BOSH_AGENT_STOP_GRACE_SECONDS`).
    pub stop_grace: Duration,
    /// Size at which a process log is rotated (10 MiB; `log_max_bytes`,
    /// `BOSH_AGENT_LOG_MAX_BYTES`).
    pub log_max_bytes: u64,
    /// Rotated files kept (5; `log_keep`, `BOSH_AGENT_LOG_KEEP`).
    pub log_keep: usize,
    /// Forced disk strategy (`disk_strategy`: `bind`|`symlink`, `BOSH_AGENT_DISK_STRATEGY`);
    /// detected when absent.
    pub disk_strategy: Option<DiskStrategy>,
    /// The port the DNS server listens on at each network address (53; `dns_port`,
    /// `BOSH_AGENT_DNS_PORT`, for tests).
    pub dns_port: u16,
    /// The VM's resolver configuration, which the agent points at its DNS server once it
    /// serves records on port 53 (`resolv_conf`, `BOSH_AGENT_RESOLV_CONF`; none by default:
    /// only a CPI knows whether the file is the VM's own, and sets it).
    pub resolv_conf: Option<PathBuf>,
}

impl Default for Tunables {
    fn default() -> Tunables {
        Tunables {
            stop_grace: Duration::from_secs(20),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 5,
            disk_strategy: None,
            dns_port: 53,
            resolv_conf: None,
        }
    }
}

impl Tunables {
    /// From the settings, then `env` (the process environment in the agent).
    pub fn from_settings(settings: &Settings, env: impl Fn(&str) -> Option<String>) -> Tunables {
        let agent_env = settings
            .env
            .get("bosh")
            .and_then(|bosh| bosh.get("agent"))
            .cloned()
            .unwrap_or(Value::Null);
        let lookup = |key: &str, var: &str| -> Option<String> {
            match agent_env.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => env(var),
            }
        };
        let defaults = Tunables::default();
        let stop_grace = lookup("stop_grace_seconds", "BOSH_AGENT_STOP_GRACE_SECONDS")
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(defaults.stop_grace);
        let log_max_bytes = lookup("log_max_bytes", "BOSH_AGENT_LOG_MAX_BYTES")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(defaults.log_max_bytes);
        let log_keep = lookup("log_keep", "BOSH_AGENT_LOG_KEEP")
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(defaults.log_keep);
        let disk_strategy =
            lookup("disk_strategy", "BOSH_AGENT_DISK_STRATEGY").and_then(|s| match s.trim() {
                "bind" => Some(DiskStrategy::Bind),
                "symlink" => Some(DiskStrategy::Symlink),
                _ => None,
            });
        let dns_port = lookup("dns_port", "BOSH_AGENT_DNS_PORT")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|port| *port > 0)
            .unwrap_or(defaults.dns_port);
        let resolv_conf = lookup("resolv_conf", "BOSH_AGENT_RESOLV_CONF")
            .map(|path| PathBuf::from(path.trim()))
            .filter(|path| path.is_absolute());
        Tunables {
            stop_grace,
            log_max_bytes,
            log_keep,
            disk_strategy,
            dns_port,
            resolv_conf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mbus_urls_split_and_redact() {
        let mbus = parse_mbus("nats://agent-1:p%40ss:word@10.0.0.4:4222");
        assert_eq!(mbus.address, "nats://10.0.0.4:4222");
        assert_eq!(mbus.user.as_deref(), Some("agent-1"));
        assert_eq!(mbus.password.as_deref(), Some("p@ss:word"));
        assert!(!format!("{mbus:?}").contains("ss:word"));
        assert_eq!(
            secrets::redact_urls("nats://agent-1:secret@127.0.0.1:4222"),
            "nats://agent-1:<redacted>@127.0.0.1:4222"
        );
        assert_eq!(
            secrets::redact_urls("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(parse_mbus("nats://u@h:1").password, None);
    }

    #[test]
    fn tunables_prefer_settings_then_environment() {
        let mut settings = Settings::default();
        let env = |var: &str| match var {
            "BOSH_AGENT_STOP_GRACE_SECONDS" => Some("3".to_string()),
            "BOSH_AGENT_LOG_MAX_BYTES" => Some("1000".to_string()),
            "BOSH_AGENT_DNS_PORT" => Some("5353".to_string()),
            _ => None,
        };
        let tunables = Tunables::from_settings(&settings, env);
        assert_eq!(tunables.stop_grace, Duration::from_secs(3));
        assert_eq!(tunables.log_max_bytes, 1000);
        assert_eq!(tunables.log_keep, 5);
        assert_eq!(tunables.dns_port, 5353);
        assert_eq!(tunables.resolv_conf, None);
        settings.env = json!({"bosh": {"agent": {
            "stop_grace_seconds": 0.5, "disk_strategy": "symlink", "resolv_conf": "/etc/resolv.conf"
        }}});
        let tunables = Tunables::from_settings(&settings, env);
        assert_eq!(tunables.stop_grace, Duration::from_millis(500));
        assert_eq!(tunables.disk_strategy, Some(DiskStrategy::Symlink));
        assert_eq!(
            tunables.resolv_conf,
            Some(PathBuf::from("/etc/resolv.conf"))
        );
        let relative = |var: &str| (var == "BOSH_AGENT_RESOLV_CONF").then(|| "resolv.conf".into());
        assert_eq!(
            Tunables::from_settings(&Settings::default(), relative).resolv_conf,
            None
        );
        let refused = |var: &str| (var == "BOSH_AGENT_DNS_PORT").then(|| "0".to_string());
        assert_eq!(Tunables::from_settings(&settings, refused).dns_port, 53);
        assert_eq!(
            Tunables::from_settings(&Settings::default(), |_| None),
            Tunables::default()
        );
    }

    #[test]
    fn updates_merge_top_level_keys_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(
            &path,
            r#"{"agent_id":"a1","mbus":"nats://x","extra":{"kept":true},"heartbeat_interval":5}"#,
        )
        .unwrap();
        let file = SettingsFile::new(&path);
        let updated = file
            .update(&json!({"disks": {"persistent": {"disk-1": {"path": "/d"}}}}))
            .unwrap();
        assert_eq!(updated.disks.persistent["disk-1"], json!({"path": "/d"}));
        assert_eq!(updated.heartbeat_interval, 5);
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["extra"], json!({"kept": true}));
        let error = file.update(&json!({"agent_id": "other"})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad arguments for update_settings: the agent id cannot change"
        );
    }
}
