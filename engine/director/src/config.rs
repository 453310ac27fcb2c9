//! Where the director and the CLI keep their settings and data.
//!
//! The director reads `director.yml` (`director serve --config`); with `--dev` (the embedded
//! default) it needs none: state, blobs, logs and its token live under the XDG data
//! directory. The CLI finds its target in this order: `--director`/`DIRECTOR_URL` with
//! `DIRECTOR_TOKEN` and `DIRECTOR_CA_CERT`, then its config file
//! (`$XDG_CONFIG_HOME/director/config.yml`), then the dev director recorded in the data
//! directory, starting it when nothing answers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blobstore::BlobstoreConfig;
pub use director_bus::{BusLimits, MbusConfig};
use secrets::Redacted;

/// The default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:25555";

/// `$XDG_DATA_HOME/director` (default `~/.local/share/director`).
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("director")
}

/// `$XDG_CONFIG_HOME/director` (default `~/.config/director`).
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("director")
}

fn xdg(variable: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
            home.join(fallback)
        }
    }
}

/// `director.yml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorConfig {
    /// The director's name (shown by `status`, used in certificate names).
    #[serde(default = "default_name")]
    pub name: String,
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Serve HTTPS with this certificate and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Where state files, logs, task logs and upload staging live.
    pub data_dir: PathBuf,
    /// The state database.
    #[serde(default)]
    pub db: Option<DbConfig>,
    /// The blobstore.
    #[serde(default)]
    pub blobstore: Option<BlobstoreSettings>,
    /// A file holding the API token (created with a random token when missing).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Limits on uploads.
    #[serde(default)]
    pub limits: Limits,
    /// The bus: a nats-server. Without it the director embeds a broker on 127.0.0.1.
    #[serde(default)]
    pub mbus: Option<MbusConfig>,
    /// What the embedded broker allows agents (connections, publish rate); only without
    /// `mbus` (nats-server has its own limits).
    #[serde(default)]
    pub bus_limits: Option<BusLimits>,
    /// The CPI (default: the local CPI under `<data_dir>/cpi`).
    #[serde(default, deserialize_with = "cpi_settings")]
    pub cpi: Option<CpiSettings>,
    /// Agents: how long to wait for one and how often they report.
    #[serde(default)]
    pub agent: AgentSettings,
    /// The health monitor: when an agent counts as unresponsive, how often to look.
    #[serde(default)]
    pub health_monitor: crate::health::HealthSettings,
}

/// `cpi`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CpiSettings {
    /// VMs are directories plus agent processes on this host.
    Local {
        /// Where VMs, disks and stemcells live (default `<data_dir>/cpi`).
        #[serde(default)]
        root: Option<PathBuf>,
    },
    /// VMs are containers of a Docker engine on this host (`cpi::docker`).
    Docker {
        /// The engine's Unix socket (default `/var/run/docker.sock`).
        #[serde(default, deserialize_with = "socket_path")]
        socket: Option<PathBuf>,
    },
    /// Any BOSH CPI executable, JSON on stdin and stdout.
    External {
        /// The executable.
        command: PathBuf,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// The `context` passed with every call.
        #[serde(default)]
        context: serde_json::Value,
    },
}

/// `cpi`, its errors prefixed with the field's name (a tagged enum's errors have no place).
fn cpi_settings<'de, D>(deserializer: D) -> Result<Option<CpiSettings>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<CpiSettings>::deserialize(deserializer)
        .map_err(|error| serde::de::Error::custom(format!("cpi: {error}")))
}

/// `cpi.socket`, its errors prefixed with the field's name.
fn socket_path<'de, D>(deserializer: D) -> Result<Option<PathBuf>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<PathBuf>::deserialize(deserializer)
        .map_err(|error| serde::de::Error::custom(format!("socket: {error}")))
}

/// `agent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Seconds from `create_vm` until the agent must answer (BOSH's `agent_wait_timeout`).
    #[serde(default = "default_agent_wait")]
    pub wait_timeout: u64,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: u64,
    /// Where agents reach the director: the embedded bus and the endpoint agents fetch and
    /// upload blobs at listen on this address. Default: 127.0.0.1, or with the Docker CPI
    /// the gateway of Docker's default bridge (the host as every container sees it).
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
}

impl Default for AgentSettings {
    fn default() -> AgentSettings {
        AgentSettings {
            wait_timeout: default_agent_wait(),
            heartbeat_interval: default_heartbeat(),
            address: None,
        }
    }
}

fn default_agent_wait() -> u64 {
    600
}
fn default_heartbeat() -> u64 {
    30
}

/// `tls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate (chain) file.
    pub certificate: PathBuf,
    /// PEM private key file.
    pub private_key: PathBuf,
}

/// `db`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// `sqlite:///path/state.db` or `postgres://user:pass@host/db` (may hold a password).
    pub url: Redacted<String>,
}

/// `blobstore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum BlobstoreSettings {
    /// A local directory.
    Local {
        /// The directory (default `<data_dir>/blobs`).
        path: Option<PathBuf>,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Bucket.
        bucket: String,
        /// Endpoint of an S3-compatible store.
        #[serde(default)]
        endpoint: Option<String>,
        /// Region.
        #[serde(default = "default_region")]
        region: String,
        /// Access key id.
        access_key_id: Redacted<String>,
        /// Secret access key.
        secret_access_key: Redacted<String>,
        /// Path-style URLs.
        #[serde(default)]
        path_style: bool,
    },
}

/// `limits`: uploads, and what one slow or idle client may hold of the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The largest upload accepted, in bytes (BOSH's default is 10000m).
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// How many times larger than the compressed archive its content may be.
    #[serde(default = "default_max_expansion")]
    pub max_expansion_ratio: u64,
    /// Seconds a client may take to send a request's headers; a kept-alive connection that
    /// sends no next request is closed after as long.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: u64,
    /// Seconds a request body may go without a byte arriving, and a response without the
    /// client taking a byte (a progress timeout: a large upload that keeps moving is never cut).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Connections served at once (TLS handshakes included); more wait in the kernel's
    /// backlog until one ends, so clients cannot exhaust the director's file descriptors.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds to connect to a URL the director downloads (`upload-release URL`).
    #[serde(default = "default_fetch_connect_timeout")]
    pub fetch_connect_timeout: u64,
    /// Seconds such a download may go without data.
    #[serde(default = "default_fetch_idle_timeout")]
    pub fetch_idle_timeout: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_upload_bytes: default_max_upload(),
            max_expansion_ratio: default_max_expansion(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            fetch_connect_timeout: default_fetch_connect_timeout(),
            fetch_idle_timeout: default_fetch_idle_timeout(),
        }
    }
}

impl Limits {
    /// The first limit that cannot work (a zero timeout or connection cap), named.
    fn check(&self) -> Result<(), ZeroLimit> {
        let zero = [
            ("header_read_timeout", self.header_read_timeout == 0),
            ("idle_timeout", self.idle_timeout == 0),
            ("max_connections", self.max_connections == 0),
            ("fetch_connect_timeout", self.fetch_connect_timeout == 0),
            ("fetch_idle_timeout", self.fetch_idle_timeout == 0),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(ZeroLimit { name }),
            None => Ok(()),
        }
    }
}

/// A `limits` setting that is zero and must not be.
#[derive(Debug, thiserror::Error)]
#[error("limits.{name} must be at least 1")]
pub struct ZeroLimit {
    /// The setting (`header_read_timeout`).
    pub name: &'static str,
}

fn default_name() -> String {
    "director".to_string()
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_max_upload() -> u64 {
    10_000 * 1024 * 1024
}
fn default_max_expansion() -> u64 {
    20
}
fn default_header_read_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_max_connections() -> usize {
    // Well under the usual soft limit of 1024 descriptors: the state database, blobs, task
    // logs and the bus need theirs too.
    512
}
fn default_fetch_connect_timeout() -> u64 {
    30
}
fn default_fetch_idle_timeout() -> u64 {
    120
}

impl DirectorConfig {
    /// The configuration of a dev director: everything under `data_dir`.
    pub fn dev(data_dir: &Path) -> DirectorConfig {
        DirectorConfig {
            name: "dev".to_string(),
            listen: DEFAULT_LISTEN.to_string(),
            tls: None,
            data_dir: data_dir.to_path_buf(),
            db: None,
            blobstore: None,
            token_file: None,
            limits: Limits::default(),
            mbus: None,
            bus_limits: None,
            cpi: None,
            agent: AgentSettings::default(),
            health_monitor: crate::health::HealthSettings::default(),
        }
    }

    /// Reads `director.yml`; errors name the file, the line and column, and what is wrong.
    pub fn load(path: &Path) -> Result<DirectorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: DirectorConfig =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::parse(path, source))?;
        config.limits.check().map_err(|zero| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: zero.to_string(),
        })?;
        Ok(config)
    }

    /// The database URL (default: SQLite in the data directory).
    pub fn db_url(&self) -> String {
        match &self.db {
            Some(db) => db.url.expose().clone(),
            None => format!("sqlite://{}", self.data_dir.join("state.db").display()),
        }
    }

    /// The blobstore (default: `<data_dir>/blobs`).
    pub fn blobstore(&self) -> BlobstoreConfig {
        match &self.blobstore {
            None | Some(BlobstoreSettings::Local { path: None }) => BlobstoreConfig::Local {
                path: self.data_dir.join("blobs"),
            },
            Some(BlobstoreSettings::Local { path: Some(path) }) => {
                BlobstoreConfig::Local { path: path.clone() }
            }
            Some(BlobstoreSettings::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                path_style,
            }) => BlobstoreConfig::S3 {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                region: region.clone(),
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                path_style: *path_style,
            },
        }
    }

    /// Whether `listen` is reachable only from this host (a loopback address or
    /// `localhost`); anything that does not parse counts as reachable from elsewhere.
    pub fn listens_on_loopback_only(&self) -> bool {
        let host = match self.listen.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => self.listen.as_str(),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The token file (default `<data_dir>/token`).
    pub fn token_path(&self) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("token"))
    }
}

/// The CLI's `config.yml`: which director to talk to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The director's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// The bearer token.
    #[serde(default)]
    pub token: Option<Redacted<String>>,
    /// A CA certificate (PEM) to trust for the director's TLS certificate.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// True when the target is a dev director this CLI may start.
    #[serde(default)]
    pub dev: bool,
}

impl ClientConfig {
    /// `$XDG_CONFIG_HOME/director/config.yml`.
    pub fn path() -> PathBuf {
        config_dir().join("config.yml")
    }

    /// Reads the config file; a missing file is an empty config.
    pub fn load() -> Result<ClientConfig, ConfigError> {
        let path = ClientConfig::path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_yaml::from_str(&text).map_err(|source| ConfigError::parse(&path, source))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Writes the config file atomically with mode 0600 (it holds a token).
    pub fn save(&self) -> Result<(), ConfigError> {
        let path = ClientConfig::path();
        let text = serde_yaml::to_string(self).map_err(|source| ConfigError::Encode {
            path: path.clone(),
            source,
        })?;
        secrets::write_private(&path, text.as_bytes())
            .map_err(|source| ConfigError::Write { path, source })
    }
}

/// Why `director.yml` or the CLI's `config.yml` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what it should be; `place` is `FILE:LINE:COLUMN` when known.
    #[error("{place}: {source}")]
    Parse {
        /// Where.
        place: String,
        /// What is wrong.
        source: serde_yaml::Error,
    },
    /// A value parses but cannot be used.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The config could not be encoded.
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_yaml::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    fn parse(path: &Path, source: serde_yaml::Error) -> ConfigError {
        let place = match source.location() {
            Some(at) => format!("{}:{}:{}", path.display(), at.line(), at.column()),
            None => path.display().to_string(),
        };
        ConfigError::Parse { place, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_holding_secrets_print_them_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(
            &path,
            "data_dir: /x\ndb: {url: 'postgres://d:dbsecret@db/director'}\nblobstore: {provider: s3, bucket: b, access_key_id: AKIAKEY, secret_access_key: s3secret}\nmbus: {url: 'nats://n:natssecret@h:4222', user: d, password: natssecret, authorization_file: /a, pid_file: /p}\n",
        )
        .unwrap();
        let config = DirectorConfig::load(&path).unwrap();
        let client = ClientConfig {
            url: Some("https://d:25555".into()),
            token: Some(Redacted("tokensecret".into())),
            ca_cert: None,
            dev: false,
        };
        let shown = format!("{config:?} {:?} {client:?}", config.blobstore());
        for secret in [
            "dbsecret",
            "AKIAKEY",
            "s3secret",
            "natssecret",
            "tokensecret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(config.db_url(), "postgres://d:dbsecret@db/director");
    }

    #[test]
    fn loopback_only_listeners() {
        let listening = |listen: &str| DirectorConfig {
            listen: listen.to_string(),
            ..DirectorConfig::dev(Path::new("/x"))
        };
        for listen in [
            "127.0.0.1:25555",
            "127.0.10.1:0",
            "[::1]:25555",
            "localhost:25555",
        ] {
            assert!(listening(listen).listens_on_loopback_only(), "{listen}");
        }
        for listen in [
            "0.0.0.0:25555",
            "10.0.0.5:25555",
            "[::]:25555",
            "director.example:25555",
        ] {
            assert!(!listening(listen).listens_on_loopback_only(), "{listen}");
        }
    }

    #[test]
    fn reads_a_full_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(
            &path,
            "name: prod\nlisten: 0.0.0.0:25555\ndata_dir: /var/lib/director\ndb: {url: 'postgres://d:p@db/director'}\nblobstore: {provider: s3, bucket: blobs, endpoint: 'http://minio:9000', access_key_id: a, secret_access_key: s, path_style: true}\n",
        )
        .unwrap();
        let config = DirectorConfig::load(&path).unwrap();
        assert_eq!(config.db_url(), "postgres://d:p@db/director");
        assert!(matches!(
            config.blobstore(),
            BlobstoreConfig::S3 {
                path_style: true,
                ..
            }
        ));
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(&path, "data_dir: /x\nlimits: {header_read_timeout: 2}\n").unwrap();
        let limits = DirectorConfig::load(&path).unwrap().limits;
        assert_eq!(
            (limits.header_read_timeout, limits.max_connections),
            (2, 512)
        );
        std::fs::write(&path, "data_dir: /x\nlimits: {max_connections: 0}\n").unwrap();
        let error = DirectorConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.ends_with("director.yml: limits.max_connections must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(&path, "data_dir: /x\nlisten: 1\nport: 3\n").unwrap();
        let error = DirectorConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("director.yml:3:1"), "{error}");
        assert!(error.contains("unknown field `port`"), "{error}");
    }

    #[test]
    fn reads_the_bus_settings_and_never_shows_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(
            &path,
            "data_dir: /d\nmbus:\n  url: nats://10.0.0.2:4222\n  user: director\n  password: s3cret\n  authorization_file: /etc/nats/director-users.conf\n  pid_file: /run/nats/nats.pid\n",
        )
        .unwrap();
        let config = DirectorConfig::load(&path).unwrap();
        let mbus = config.mbus.as_ref().unwrap();
        assert_eq!(mbus.url, "nats://10.0.0.2:4222");
        assert_eq!(mbus.agent_url, None);
        assert_eq!(mbus.pid_file, PathBuf::from("/run/nats/nats.pid"));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(DirectorConfig::dev(Path::new("/d")).mbus, None);
    }

    #[test]
    fn reads_the_embedded_bus_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        std::fs::write(
            &path,
            "data_dir: /d\nbus_limits:\n  max_connections: 100\n  publish_rate: {messages_per_second: 5}\n",
        )
        .unwrap();
        let limits = DirectorConfig::load(&path).unwrap().bus_limits.unwrap();
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.publish_rate.messages_per_second, 5);
        assert_eq!(
            limits.publish_rate.messages_burst,
            BusLimits::default().publish_rate.messages_burst
        );
        assert_eq!(DirectorConfig::dev(Path::new("/d")).bus_limits, None);
    }

    #[test]
    fn reads_the_docker_cpi_and_names_a_bad_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.yml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            DirectorConfig::load(&path)
        };
        assert_eq!(
            load("data_dir: /d\ncpi: {type: docker}\n").unwrap().cpi,
            Some(CpiSettings::Docker { socket: None })
        );
        assert_eq!(
            load("data_dir: /d\ncpi: {type: docker, socket: /run/docker.sock}\n")
                .unwrap()
                .cpi,
            Some(CpiSettings::Docker {
                socket: Some(PathBuf::from("/run/docker.sock"))
            })
        );
        for (text, expected) in [
            (
                "data_dir: /d\ncpi: {type: docker, sockets: /s}\n",
                "unknown field `sockets`",
            ),
            (
                "data_dir: /d\ncpi: {type: docker, socket: [/s]}\n",
                "socket",
            ),
            (
                "data_dir: /d\ncpi: {type: dockr}\n",
                "unknown variant `dockr`",
            ),
        ] {
            let error = load(text).unwrap_err().to_string();
            assert!(
                error.contains("director.yml") && error.contains("cpi: "),
                "{error}"
            );
            assert!(error.contains(expected), "{expected} not in {error}");
        }
    }

    #[test]
    fn dev_defaults_live_in_the_data_dir() {
        let config = DirectorConfig::dev(Path::new("/d"));
        assert_eq!(config.db_url(), "sqlite:///d/state.db");
        assert_eq!(
            config.blobstore(),
            BlobstoreConfig::Local {
                path: PathBuf::from("/d/blobs")
            }
        );
        assert_eq!(config.token_path(), PathBuf::from("/d/token"));
    }
}
