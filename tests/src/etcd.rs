//! The `etcd` release (`releases/etcd`, deployed by `manifests/etcd.yml`) on a user's
//! director, and a small etcd v3 client for tests.
//!
//! The release's blobs are Debian's `etcd-server` and `etcd-client` packages, which are not
//! committed: [`fetch_debs`] keeps them in a cache (`releases/etcd/fetch-blobs`, which
//! `.ci/run` also runs) and [`release`] adds them to a copy of the release with `director
//! add-blob`, checking that `config/blobs.yml` still pins exactly them.
//!
//! [`EtcdClient`] speaks etcd's v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`,
//! `/v3/cluster/member/list`) over TLS with a client certificate. It behaves as etcd's own
//! clients do towards a cluster: it stays on one member and moves to the next only when a
//! connection cannot be made (nothing was sent, so nothing can have happened); any other
//! error fails the call, because a request that reached a member may have taken effect.
//! One answer is as certain as a refused connection, and there it goes further than
//! etcd's clients: "raft proposal dropped", which a leader gives while leadership moves
//! away from it (the proposal never entered the log), is sent again to the same member
//! after a pause.
//! Each request has a connection of its own with a full TLS handshake, so a member that
//! turns new clients away before it stops is left at once, and no request of this client
//! is in flight on it when it stops. [`Writer`] writes a
//! key at a fixed pace in the background and reports what was acknowledged and what
//! failed: the roll-under-load tests (local here, Docker later) use both.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::{User, commit_all, copy_dir};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release's source directory in the repository.
pub fn release_source() -> PathBuf {
    repo().join("releases/etcd")
}

/// The cache of the release's `.deb` blobs: `$ETCD_DEBS_DIR`, else what
/// `releases/etcd/fetch-blobs` uses by default (`$XDG_CACHE_HOME` or `~/.cache`, then
/// `director/etcd-debs`).
pub fn debs_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("ETCD_DEBS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join("director/etcd-debs")
}

/// Makes sure the cache holds the `.deb` files `config/blobs.yml` pins, with their sizes
/// and digests (`releases/etcd/fetch-blobs` downloads only what is missing, under a lock,
/// so tests running at once do not download into each other), and answers the cache.
pub fn fetch_debs() -> PathBuf {
    let cache = debs_cache();
    std::fs::create_dir_all(&cache).unwrap();
    let out = crate::run(
        Command::new("flock")
            .arg(cache.join(".lock"))
            .arg(release_source().join("fetch-blobs"))
            .arg("--cache")
            .arg(&cache),
    );
    assert_eq!(
        out.code, 0,
        "releases/etcd/fetch-blobs could not provide Debian's etcd packages: {}",
        out.stderr
    );
    cache
}

/// The blob paths `config/blobs.yml` of the release source pins (`etcd/<file>.deb`).
pub fn pinned_blobs() -> Vec<String> {
    let text = std::fs::read_to_string(release_source().join("config/blobs.yml")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with(' ') && line.trim_end().ends_with(".deb:"))
        .map(|line| line.trim_end().trim_end_matches(':').to_string())
        .collect()
}

/// A copy of `releases/etcd` in a fresh git repository, its blobs added from the cache with
/// `director add-blob`; the copy's `config/blobs.yml` must come out as committed, which
/// proves the cached files are the ones the release pins.
pub fn release(user: &User) -> PathBuf {
    let cache = fetch_debs();
    let dir = user.home.path().join("etcd-release");
    copy_dir(&release_source(), &dir);
    let pinned = std::fs::read_to_string(dir.join("config/blobs.yml")).unwrap();
    for blob in pinned_blobs() {
        let file = cache.join(Path::new(&blob).file_name().unwrap());
        let out = user.run(&[
            "add-blob",
            file.to_str().unwrap(),
            &blob,
            "--dir",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "add-blob {blob}: {}", out.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("config/blobs.yml")).unwrap(),
        pinned,
        "adding the cached packages changed config/blobs.yml"
    );
    commit_all(&dir);
    dir
}

/// `manifests/etcd.yml` moved onto the test's own loopback /24 (`127.0.NET.0/24`), with the
/// release at `release` and the stemcell recipe of the repository; sets the quickstart's
/// cloud config, moved the same way, on the user's director.
pub fn manifest(user: &User, net: u8, release: &Path) -> PathBuf {
    crate::hello::quickstart_on_own_network(user, net);
    let path = user.home.path().join("etcd.yml");
    std::fs::write(&path, manifest_text(release, &format!("127.0.{net}."))).unwrap();
    path
}

/// The text of `manifests/etcd.yml` with its members' addresses (static IPs and the
/// certificates' alternative names) moved from `127.0.10.N` to `<prefix>N`, its release at
/// `release` and its stemcell recipe the repository's: for any network, a Docker one too.
pub fn manifest_text(release: &Path, prefix: &str) -> String {
    std::fs::read_to_string(repo().join("manifests/etcd.yml"))
        .unwrap()
        .replace("127.0.10.", prefix)
        .replace(
            "file://../releases/etcd",
            &format!("file://{}", release.display()),
        )
        .replace(
            "file://../stemcells/",
            &format!("file://{}/stemcells/", repo().display()),
        )
}

/// The client URLs of the deployment's instances (`https://IP:2379`), by index.
pub fn client_urls(user: &User, deployment: &str) -> Vec<String> {
    let mut list: Vec<Value> = user
        .json(&["-d", deployment, "instances"])
        .as_array()
        .unwrap()
        .clone();
    list.sort_by_key(|i| i["index"].as_u64());
    list.iter()
        .map(|i| format!("https://{}:2379", i["ips"][0].as_str().unwrap()))
        .collect()
}

/// A certificate with its key and CA, in PEM.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The CA that signed it (and that the client trusts).
    pub ca: String,
    /// The certificate.
    pub certificate: String,
    /// Its private key.
    pub private_key: String,
}

impl Tls {
    /// The certificate variable `name` of the vars store `store` (what `director deploy
    /// --vars-store` generated), read with `director int --path`.
    pub fn from_vars_store(user: &User, store: &Path, name: &str) -> Tls {
        let field = |field: &str| {
            let out = user.run(&[
                "int",
                store.to_str().unwrap(),
                "--path",
                &format!("/{name}/{field}"),
            ]);
            assert_eq!(out.code, 0, "{name}.{field}: {}", out.stderr);
            out.stdout
        };
        Tls {
            ca: field("ca"),
            certificate: field("certificate"),
            private_key: field("private_key"),
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum EtcdError {
    /// No member took a connection (each refused it or did not answer in time), so nothing
    /// was sent: one reason per member tried.
    Unreachable(Vec<String>),
    /// The member refused the proposal before it entered the raft log (raft's "proposal
    /// dropped", which a leader answers while leadership moves away from it), again after
    /// every retry: nothing happened.
    Dropped {
        /// The member's client URL.
        endpoint: String,
        /// etcd's message.
        message: String,
    },
    /// A member took the request and failed it, or the exchange broke once the request was
    /// on its way: it may or may not have taken effect, so it is not retried.
    Failed {
        /// The member's client URL.
        endpoint: String,
        /// What went wrong (etcd's own message when it sent one).
        message: String,
    },
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unreachable(reasons) => {
                write!(f, "no member could be reached: {}", reasons.join("; "))
            }
            EtcdError::Dropped { endpoint, message } | EtcdError::Failed { endpoint, message } => {
                write!(f, "{endpoint}: {message}")
            }
        }
    }
}

/// A member as `member/list` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id (decimal, as the gateway writes it).
    pub id: String,
    /// Its name (empty until it has started).
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs (empty until it has started).
    pub client_urls: Vec<String>,
}

impl Member {
    /// Whether it has started (published its name and client URLs to the cluster).
    pub fn started(&self) -> bool {
        !self.name.is_empty() && !self.client_urls.is_empty()
    }
}

/// An etcd v3 client over the JSON gateway (see the module's documentation).
pub struct EtcdClient {
    endpoints: Vec<String>,
    /// The member in use (index into `endpoints`).
    current: AtomicUsize,
    /// How often it moved to another member.
    failovers: AtomicUsize,
    /// How often a member dropped a proposal and it was sent again.
    resent: AtomicUsize,
    http: reqwest::Client,
}

/// How long a connection may take to be made before the next member is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request may take once connected: a slow answer is not a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often, and how far apart, a dropped proposal is sent again: moving leadership takes
/// milliseconds.
const DROPPED_RETRIES: u32 = 5;
const DROPPED_PAUSE: Duration = Duration::from_millis(100);
/// What etcd answers for a proposal raft refused before it entered the log
/// (`raft.ErrProposalDropped`).
const PROPOSAL_DROPPED: &str = "raft proposal dropped";

impl EtcdClient {
    /// A client of the members at `endpoints` (`https://IP:PORT`), trusting `tls.ca` only
    /// and presenting `tls`'s certificate.
    pub fn new(endpoints: Vec<String>, tls: &Tls) -> Result<EtcdClient, String> {
        if endpoints.is_empty() {
            return Err("an etcd client needs at least one endpoint".to_string());
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(tls)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A connection per request (see the module's documentation).
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"))?;
        Ok(EtcdClient {
            endpoints,
            current: AtomicUsize::new(0),
            failovers: AtomicUsize::new(0),
            resent: AtomicUsize::new(0),
            http,
        })
    }

    /// The member in use now.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::SeqCst) % self.endpoints.len()]
    }

    /// How often the client moved to another member because one could not be reached.
    pub fn failovers(&self) -> usize {
        self.failovers.load(Ordering::SeqCst)
    }

    /// How often a member dropped a proposal (while leadership moved) and it was sent again.
    pub fn resent(&self) -> usize {
        self.resent.load(Ordering::SeqCst)
    }

    /// `POST <member><path>` with `body` ([`EtcdClient::call_once`]), sent again to the same
    /// member after a pause while it answers that it dropped the proposal: nothing happened,
    /// and once leadership has moved the member takes it.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut retries = 0;
        loop {
            match self.call_once(path, body).await {
                Err(EtcdError::Dropped { .. }) if retries < DROPPED_RETRIES => {
                    retries += 1;
                    self.resent.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(DROPPED_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// `POST <member><path>` with `body`: the member in use first, then each other member
    /// in turn while connections cannot be made; the first member that takes the request
    /// stays in use. Answers the response's JSON.
    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let count = self.endpoints.len();
        let first = self.current.load(Ordering::SeqCst);
        let mut unreachable = Vec::new();
        for attempt in 0..count {
            let index = (first + attempt) % count;
            let endpoint = &self.endpoints[index];
            let sent = self
                .http
                .post(format!("{endpoint}{path}"))
                .json(body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) if error.is_connect() => {
                    unreachable.push(format!("{endpoint}: {}", error_chain(&error)));
                    continue;
                }
                Err(error) => {
                    return Err(EtcdError::Failed {
                        endpoint: endpoint.clone(),
                        message: error_chain(&error),
                    });
                }
            };
            if index != first {
                self.current.store(index, Ordering::SeqCst);
                self.failovers.fetch_add(1, Ordering::SeqCst);
            }
            return answer(endpoint, response).await;
        }
        Err(EtcdError::Unreachable(unreachable))
    }

    /// Puts `key` = `value`.
    pub async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/put",
            &json!({"key": BASE64.encode(key), "value": BASE64.encode(value)}),
        )
        .await
        .map(|_| ())
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<String>, EtcdError> {
        let answer = self
            .call("/v3/kv/range", &json!({"key": BASE64.encode(key)}))
            .await?;
        let kvs = key_values(self.endpoint(), &answer)?;
        Ok(kvs.into_iter().next().map(|(_, value)| value))
    }

    /// Every key starting with `prefix`, with its value, in key order.
    pub async fn range(&self, prefix: &str) -> Result<Vec<(String, String)>, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({
                    "key": BASE64.encode(prefix),
                    "range_end": BASE64.encode(prefix_end(prefix)),
                }),
            )
            .await?;
        key_values(self.endpoint(), &answer)
    }

    /// The cluster's members.
    pub async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let answer = self.call("/v3/cluster/member/list", &json!({})).await?;
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(answer["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .map(|m| Member {
                        id: m["ID"].as_str().unwrap_or_default().to_string(),
                        name: m["name"].as_str().unwrap_or_default().to_string(),
                        peer_urls: strings(&m["peerURLs"]),
                        client_urls: strings(&m["clientURLs"]),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The client's TLS: only `tls.ca` trusted, `tls`'s certificate presented, and every
/// connection a full handshake. Without session resumption a member that turns new clients
/// away (the etcd job's drain does, by moving the certificate it serves aside before the
/// member stops) is refused at once, where a resumed session would slip past it.
fn tls_config(tls: &Tls) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca.as_bytes()) {
        let ca = ca.map_err(|e| format!("the CA is not a PEM certificate: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("the CA cannot be trusted: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA is not a PEM certificate: no certificate in it".to_string());
    }
    let chain = CertificateDer::pem_slice_iter(tls.certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the client certificate is not PEM: no certificate in it".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(tls.private_key.as_bytes())
        .map_err(|e| format!("the client key is not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set the TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate and key do not go together: {e}"))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// An error with its sources, which say what really happened (refused, timed out, TLS).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A member's answer, read and then classified by [`classify`].
async fn answer(endpoint: &str, response: reqwest::Response) -> Result<Value, EtcdError> {
    let status = response.status();
    let text = response.text().await.map_err(|e| EtcdError::Failed {
        endpoint: endpoint.to_string(),
        message: format!("reading the answer: {}", error_chain(&e)),
    })?;
    classify(endpoint, status, &text)
}

/// A member's answer: its JSON when the status is a success and it holds no `error`; a
/// dropped proposal ([`EtcdError::Dropped`]); else a failure with etcd's message.
fn classify(endpoint: &str, status: reqwest::StatusCode, text: &str) -> Result<Value, EtcdError> {
    let failed = |message: String| EtcdError::Failed {
        endpoint: endpoint.to_string(),
        message,
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| failed(format!("HTTP {status}, not JSON ({e}): {text}")))?;
    if status.is_success() && value.get("error").is_none() {
        return Ok(value);
    }
    let message = value["message"]
        .as_str()
        .or(value["error"].as_str())
        .unwrap_or(text);
    if message == PROPOSAL_DROPPED {
        return Err(EtcdError::Dropped {
            endpoint: endpoint.to_string(),
            message: message.to_string(),
        });
    }
    Err(failed(format!("HTTP {status}: {message}")))
}

/// The `kvs` of a range answer, decoded.
fn key_values(endpoint: &str, answer: &Value) -> Result<Vec<(String, String)>, EtcdError> {
    let decode = |field: &Value| -> Result<String, EtcdError> {
        let text = field.as_str().unwrap_or_default();
        BASE64
            .decode(text)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| EtcdError::Failed {
                endpoint: endpoint.to_string(),
                message: format!("a key or value is not base64 of UTF-8: {text:?}"),
            })
    };
    let Some(kvs) = answer.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    kvs.iter()
        .map(|kv| Ok((decode(&kv["key"])?, decode(&kv["value"])?)))
        .collect()
}

/// The end of the range of keys starting with `prefix` (the prefix with its last byte
/// incremented), as etcd's clients compute it.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff (or the prefix is empty): to the end of the key space.
    vec![0]
}

/// What a [`Writer`] did.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// The keys whose write was acknowledged, in order.
    pub acknowledged: Vec<String>,
    /// The writes that failed: key and why.
    pub failed: Vec<(String, String)>,
    /// The longest acknowledged write.
    pub slowest: Duration,
}

/// Writes `<prefix><n>` = `<n>` (n = 000000, 000001, …) every interval through a client, in
/// a thread of its own, until stopped (bounded by a time limit, so it always ends).
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<WriterReport>,
}

impl Writer {
    /// Starts writing; stops by itself after `limit`.
    pub fn start(
        client: Arc<EtcdClient>,
        prefix: &str,
        every: Duration,
        limit: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let prefix = prefix.to_string();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the writer");
            runtime.block_on(write_until_stopped(
                &client, &prefix, every, limit, &stopped,
            ))
        });
        Writer { stop, thread }
    }

    /// Stops writing (after the write in flight) and answers what happened.
    pub fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the writer thread does not panic")
    }
}

async fn write_until_stopped(
    client: &EtcdClient,
    prefix: &str,
    every: Duration,
    limit: Duration,
    stop: &AtomicBool,
) -> WriterReport {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = WriterReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        ticks.tick().await;
        let key = format!("{prefix}{n:06}");
        let began = Instant::now();
        match client.put(&key, &n.to_string()).await {
            Ok(()) => {
                report.slowest = report.slowest.max(began.elapsed());
                report.acknowledged.push(key);
            }
            Err(error) => report.failed.push((key, error.to_string())),
        }
        n += 1;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end("roll/"), b"roll0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn range_answers_are_decoded_and_bad_ones_named() {
        let answer = json!({"kvs": [{"key": "Zm9v", "value": "YmFy"}], "count": "1"});
        assert_eq!(
            key_values("e", &answer).unwrap(),
            vec![("foo".to_string(), "bar".to_string())]
        );
        assert_eq!(key_values("e", &json!({"count": "0"})).unwrap(), vec![]);
        let bad = key_values(
            "https://m:2379",
            &json!({"kvs": [{"key": "%%", "value": ""}]}),
        );
        assert_eq!(
            bad.unwrap_err().to_string(),
            "https://m:2379: a key or value is not base64 of UTF-8: \"%%\""
        );
    }

    #[test]
    fn answers_are_taken_dropped_proposals_told_apart_and_failures_named() {
        let ok = reqwest::StatusCode::OK;
        let error = reqwest::StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(
            classify("m", ok, r#"{"header": {"revision": "2"}}"#).unwrap()["header"]["revision"],
            "2"
        );
        let dropped =
            r#"{"error": "raft proposal dropped", "message": "raft proposal dropped", "code": 2}"#;
        assert!(matches!(
            classify("m", error, dropped),
            Err(EtcdError::Dropped { .. })
        ));
        let timed_out = r#"{"error": "etcdserver: request timed out", "message": "etcdserver: request timed out", "code": 14}"#;
        assert_eq!(
            classify(
                "https://m:2379",
                reqwest::StatusCode::SERVICE_UNAVAILABLE,
                timed_out
            )
            .unwrap_err()
            .to_string(),
            "https://m:2379: HTTP 503 Service Unavailable: etcdserver: request timed out"
        );
        assert_eq!(
            classify("m", error, "<html>").unwrap_err().to_string(),
            "m: HTTP 500 Internal Server Error, not JSON (expected value at line 1 column 1): <html>"
        );
    }

    #[test]
    fn a_client_needs_an_endpoint_and_pem_material() {
        let tls = Tls {
            ca: "not pem".to_string(),
            certificate: String::new(),
            private_key: String::new(),
        };
        assert_eq!(
            EtcdClient::new(vec![], &tls).err().as_deref(),
            Some("an etcd client needs at least one endpoint")
        );
        assert_eq!(
            EtcdClient::new(vec!["https://127.0.0.1:1".to_string()], &tls)
                .err()
                .as_deref(),
            Some("the CA is not a PEM certificate: no certificate in it")
        );
    }
}
