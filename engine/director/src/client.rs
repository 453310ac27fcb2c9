//! The CLI's side of the director API: finding the director (starting a dev director when
//! there is none), calls with the bearer token, uploads with a progress bar, and following a
//! task's event log until it ends.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};

use crate::api::{DevRecord, Info};
use crate::config::{self, ClientConfig};

/// Client failures; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the target.
    #[error("cannot reach the director at {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The director answered with an error.
    #[error("{0}")]
    Director(String),
    /// A dev director could not be started.
    #[error("could not start a dev director: {0}")]
    DevStart(String),
    /// A local file could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
}

/// Where to find the director, from flags and the environment.
#[derive(Clone, Debug, Default)]
pub struct TargetFlags {
    /// `--director URL` or `DIRECTOR_URL`.
    pub url: Option<String>,
    /// `DIRECTOR_TOKEN`.
    pub token: Option<String>,
    /// `DIRECTOR_CA_CERT`: a PEM certificate, or a path to one.
    pub ca_cert: Option<String>,
}

/// A connected client.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
    /// The dev director of this user on this host: it can read the user's files itself.
    local: bool,
}

fn http_client(ca_cert: Option<&str>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(ca) = ca_cert {
        let pem = if ca.contains("-----BEGIN") {
            ca.as_bytes().to_vec()
        } else {
            std::fs::read(ca).map_err(|source| ClientError::Io {
                context: format!("reading the CA certificate {ca}"),
                source,
            })?
        };
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ClientError::Config(format!("the director CA certificate is not PEM: {e}"))
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))
}

impl Client {
    /// A client for `url`.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&str>,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            token,
            http: http_client(ca_cert)?,
            local: false,
        })
    }

    /// Finds the director: flags/environment, then the CLI config, then the dev director
    /// (started when nothing answers; `say` prints the one line that says so).
    pub async fn connect(
        flags: &TargetFlags,
        say: &mut dyn FnMut(&str),
    ) -> Result<Client, ClientError> {
        if let Some(url) = &flags.url {
            return Client::new(url, flags.token.clone(), flags.ca_cert.as_deref());
        }
        let saved = ClientConfig::load().map_err(ClientError::Config)?;
        if let (Some(url), false) = (&saved.url, saved.dev) {
            let token = flags.token.clone().or(saved.token.clone());
            let ca = flags.ca_cert.clone().or(saved.ca_cert.clone());
            return Client::new(url, token, ca.as_deref());
        }
        Client::dev(say).await
    }

    /// The dev director of this user (`$XDG_DATA_HOME/director`), started if needed.
    pub async fn dev(say: &mut dyn FnMut(&str)) -> Result<Client, ClientError> {
        let data_dir = config::data_dir();
        if let Some(record) = DevRecord::load(&data_dir) {
            let mut client = Client::new(&record.url, Some(record.token.clone()), None)?;
            client.local = true;
            if client.is_ours(Duration::from_secs(2)).await {
                return Ok(client);
            }
        }
        let mut client = start_dev_director(&data_dir, say).await?;
        client.local = true;
        Ok(client)
    }

    /// The director's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = builder.send().await.map_err(|e| ClientError::Unreachable {
            url: self.url.clone(),
            detail: error_chain(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Json>(&body)
            .ok()
            .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}: {body}"));
        Err(ClientError::Director(message))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        response
            .json::<T>()
            .await
            .map_err(|e| ClientError::Director(format!("unexpected answer from the director: {e}")))
    }

    async fn info_with_timeout(&self, timeout: Duration) -> Result<Info, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/info").timeout(timeout))
            .await
    }

    /// Whether the director at the recorded address is the one the record names: it answers
    /// and takes the record's token. After a dev director died, another one (another
    /// user's, or a test's) may have taken its port; that one is not ours to use.
    async fn is_ours(&self, timeout: Duration) -> bool {
        self.info_with_timeout(timeout).await.is_ok()
            && self
                .json::<Json>(
                    self.request(reqwest::Method::GET, "/tasks")
                        .timeout(timeout),
                )
                .await
                .is_ok()
    }

    /// `GET /info`.
    pub async fn info(&self) -> Result<Info, ClientError> {
        self.info_with_timeout(Duration::from_secs(10)).await
    }

    /// `GET` a JSON document.
    pub async fn get(&self, path: &str) -> Result<Json, ClientError> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    /// `DELETE`, answered with a task or a message.
    pub async fn delete(&self, path: &str) -> Result<Json, ClientError> {
        self.json(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `POST` a JSON body.
    pub async fn post(&self, path: &str, body: &Json) -> Result<Json, ClientError> {
        self.json(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `POST` a text body (a manifest), answered with JSON.
    pub async fn post_text(&self, path: &str, body: &str) -> Result<Json, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "text/yaml")
                .body(body.to_string()),
        )
        .await
    }

    /// `PUT` a text body (a config), answered with JSON.
    pub async fn put_text(&self, path: &str, body: &str) -> Result<Json, ClientError> {
        self.json(
            self.request(reqwest::Method::PUT, path)
                .header(reqwest::header::CONTENT_TYPE, "text/yaml")
                .body(body.to_string()),
        )
        .await
    }

    /// `GET` a JSON document, `None` when the director answers 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<Json>, ClientError> {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.url.clone(),
                detail: error_chain(&e),
            })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Json>(&body)
                .ok()
                .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}: {body}"));
            return Err(ClientError::Director(message));
        }
        response
            .json::<Json>()
            .await
            .map(Some)
            .map_err(|e| ClientError::Director(format!("unexpected answer from the director: {e}")))
    }

    /// Sends a file to `endpoint` (`/releases`, `/stemcells`): a dev director on this host
    /// reads it where it is; any other director gets it streamed, with a progress bar on a
    /// terminal. Returns the queued task.
    pub async fn upload(
        &self,
        endpoint: &str,
        file: &Path,
        sha256: Option<&str>,
        fix: bool,
        progress: bool,
    ) -> Result<Json, ClientError> {
        if self.local {
            let absolute = std::fs::canonicalize(file).map_err(|source| ClientError::Io {
                context: format!("reading {}", file.display()),
                source,
            })?;
            let location = format!("file://{}", absolute.display());
            return self.upload_remote(endpoint, &location, sha256, fix).await;
        }
        let size = std::fs::metadata(file)
            .map_err(|source| ClientError::Io {
                context: format!("reading {}", file.display()),
                source,
            })?
            .len();
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::Io {
                context: format!("opening {}", file.display()),
                source,
            })?;
        let bar = if progress && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!(
                "Uploading {}",
                file.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            Some(bar)
        } else {
            None
        };
        let counter = bar.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).inspect(move |chunk| {
                if let (Some(bar), Ok(chunk)) = (&counter, chunk) {
                    bar.inc(chunk.len() as u64);
                }
            });
        let mut query = vec![("fix", fix.to_string())];
        if let Some(sha256) = sha256 {
            query.push(("sha256", sha256.to_string()));
        }
        let builder = self
            .request(reqwest::Method::POST, endpoint)
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream));
        let result = self.json::<Json>(builder).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result.and_then(task_of)
    }

    /// Asks the director to download `url` itself.
    pub async fn upload_remote(
        &self,
        endpoint: &str,
        url: &str,
        sha256: Option<&str>,
        fix: bool,
    ) -> Result<Json, ClientError> {
        let builder = self
            .request(reqwest::Method::POST, endpoint)
            .query(&[("fix", fix.to_string())])
            .json(&json!({ "location": url, "sha256": sha256 }));
        self.json::<Json>(builder).await.and_then(task_of)
    }

    /// One chunk of a task's output from `offset`: the text, the next offset, the task state.
    pub async fn output(
        &self,
        id: i64,
        kind: &str,
        offset: u64,
    ) -> Result<(String, u64, String), ClientError> {
        let response = self
            .send(
                self.request(reqwest::Method::GET, &format!("/tasks/{id}/output"))
                    .query(&[("type", kind), ("offset", &offset.to_string())]),
            )
            .await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let next = header("x-next-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let state = header("x-task-state").unwrap_or_default();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Director(e.to_string()))?;
        Ok((text, next, state))
    }

    /// Follows task `id` until it ends, handing each new chunk of output `kind` to `sink`;
    /// returns the task.
    pub async fn follow(
        &self,
        id: i64,
        kind: &str,
        sink: &mut dyn FnMut(&str),
    ) -> Result<Json, ClientError> {
        let mut offset = 0;
        loop {
            let (text, next, state) = self.output(id, kind, offset).await?;
            if !text.is_empty() {
                sink(&text);
            }
            offset = next;
            if !matches!(state.as_str(), "queued" | "processing" | "cancelling") {
                let (rest, _, _) = self.output(id, kind, offset).await?;
                if !rest.is_empty() {
                    sink(&rest);
                }
                return self.get(&format!("/tasks/{id}")).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn task_of(answer: Json) -> Result<Json, ClientError> {
    answer
        .get("task")
        .cloned()
        .ok_or_else(|| ClientError::Director(format!("expected a task, got {answer}")))
}

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

/// Starts `director serve --dev` in the background, in its own process group so the
/// terminal's Ctrl-C does not reach it, logging to `<data_dir>/director.log`.
async fn start_dev_director(
    data_dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<Client, ClientError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ClientError::Io {
        context: format!("creating {}", data_dir.display()),
        source,
    })?;
    let log_path = data_dir.join("director.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ClientError::Io {
            context: format!("opening {}", log_path.display()),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| ClientError::Io {
        context: "duplicating the log file".to_string(),
        source,
    })?;
    let executable: PathBuf = std::env::current_exe().map_err(|source| ClientError::Io {
        context: "finding the director binary".to_string(),
        source,
    })?;
    let _ = std::fs::remove_file(DevRecord::path(data_dir));
    let mut command = std::process::Command::new(executable);
    command
        .args(["serve", "--dev"])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClientError::DevStart(e.to_string()))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(ClientError::DevStart(format!(
                "it exited with {status}; the end of {}:\n{}",
                log_path.display(),
                last.join("\n")
            )));
        }
        if let Some(record) = DevRecord::load(data_dir) {
            if record.pid == child.id() {
                let client = Client::new(&record.url, Some(record.token.clone()), None)?;
                if client
                    .info_with_timeout(Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    say(&format!(
                        "Started a dev director at {} (state in {}; `director stop-server` stops it)",
                        record.url,
                        data_dir.display()
                    ));
                    return Ok(client);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClientError::DevStart(format!(
        "it did not answer within 60 s; see {}",
        log_path.display()
    )))
}

/// Renders event-log JSON lines the way `bosh task` does:
/// `Task 12 | 18:02:03 | Uploading release: hello-lib/8f3c… (00:00:01)`.
#[derive(Default)]
pub struct EventRenderer {
    task: i64,
    started: std::collections::HashMap<(String, String), u64>,
}

impl EventRenderer {
    /// A renderer for task `task`.
    pub fn new(task: i64) -> EventRenderer {
        EventRenderer {
            task,
            started: std::collections::HashMap::new(),
        }
    }

    /// The lines to print for a chunk of the event log.
    pub fn render(&mut self, chunk: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in chunk.lines() {
            let Ok(event) = serde_json::from_str::<crate::tasks::Event>(line) else {
                continue;
            };
            let time = clock(event.time);
            let prefix = format!("Task {} | {time} |", self.task);
            if let Some(error) = &event.error {
                if event.stage.is_none() {
                    out.push(format!("{prefix} Error: {}", error.message));
                    continue;
                }
            }
            if event.kind.as_deref() == Some("warning") {
                out.push(format!(
                    "{prefix} Warning: {}",
                    event.message.unwrap_or_default()
                ));
                continue;
            }
            let (Some(stage), Some(step), Some(state)) =
                (event.stage.clone(), event.task.clone(), event.state)
            else {
                continue;
            };
            let key = (stage.clone(), step.clone());
            match state {
                crate::tasks::EventState::Started => {
                    self.started.insert(key, event.time);
                }
                crate::tasks::EventState::InProgress => {}
                crate::tasks::EventState::Finished | crate::tasks::EventState::Failed => {
                    let began = self.started.remove(&key).unwrap_or(event.time);
                    let took = event.time.saturating_sub(began);
                    let tags = if event.tags.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", event.tags.join(", "))
                    };
                    out.push(format!(
                        "{prefix} {stage}{tags}: {step} ({:02}:{:02}:{:02})",
                        took / 3600,
                        took / 60 % 60,
                        took % 60
                    ));
                    if state == crate::tasks::EventState::Failed {
                        let detail = event
                            .data
                            .as_ref()
                            .and_then(|d| d.error.as_deref())
                            .unwrap_or("failed");
                        out.push(format!("            L Error: {detail}"));
                    }
                }
            }
        }
        out
    }
}

/// Renders a task's events on a terminal: the finished steps as `bosh task` lines above, and
/// one live progress bar per running stage (steps done of total, the steps in flight and
/// what each is doing: `executing drain`, `starting jobs`…).
pub struct ProgressRenderer {
    lines: EventRenderer,
    multi: indicatif::MultiProgress,
    bars: std::collections::HashMap<String, indicatif::ProgressBar>,
    /// Steps in flight per stage, with their last status.
    running: std::collections::HashMap<String, std::collections::BTreeMap<String, String>>,
}

impl ProgressRenderer {
    /// A renderer for task `task` drawing on stderr.
    pub fn new(task: i64) -> ProgressRenderer {
        ProgressRenderer {
            lines: EventRenderer::new(task),
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            bars: std::collections::HashMap::new(),
            running: std::collections::HashMap::new(),
        }
    }

    fn bar(&mut self, stage: &str, total: u64) -> indicatif::ProgressBar {
        if let Some(bar) = self.bars.get(stage) {
            return bar.clone();
        }
        let bar = self.multi.add(indicatif::ProgressBar::new(total));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:20}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars.insert(stage.to_string(), bar.clone());
        bar
    }

    fn show_running(&self, stage: &str) {
        if let (Some(bar), Some(steps)) = (self.bars.get(stage), self.running.get(stage)) {
            let text: Vec<String> = steps
                .iter()
                .map(|(step, status)| {
                    if status.is_empty() {
                        step.clone()
                    } else {
                        format!("{step}: {status}")
                    }
                })
                .collect();
            bar.set_message(text.join(" | "));
        }
    }

    /// Takes a chunk of the event log.
    pub fn render(&mut self, chunk: &str) {
        for line in self.lines.render(chunk) {
            self.multi.suspend(|| eprintln!("{line}"));
        }
        for line in chunk.lines() {
            let Ok(event) = serde_json::from_str::<crate::tasks::Event>(line) else {
                continue;
            };
            let (Some(stage), Some(step), Some(state)) =
                (event.stage.clone(), event.task.clone(), event.state)
            else {
                continue;
            };
            let key = if event.tags.is_empty() {
                stage
            } else {
                format!("{stage} {}", event.tags.join(", "))
            };
            let bar = self.bar(&key, u64::from(event.total.unwrap_or(1)));
            let steps = self.running.entry(key.clone()).or_default();
            match state {
                crate::tasks::EventState::Started => {
                    steps.insert(step, String::new());
                }
                crate::tasks::EventState::InProgress => {
                    let status = event
                        .data
                        .as_ref()
                        .and_then(|d| d.status.clone())
                        .unwrap_or_default();
                    steps.insert(step, status);
                }
                crate::tasks::EventState::Finished | crate::tasks::EventState::Failed => {
                    steps.remove(&step);
                    bar.inc(1);
                    if bar.position() >= bar.length().unwrap_or(0) {
                        bar.finish_and_clear();
                    }
                }
            }
            self.show_running(&key);
        }
    }

    /// Removes the bars (the task ended).
    pub fn finish(&self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

fn clock(unix: u64) -> String {
    let seconds = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_events_like_bosh_task() {
        let mut renderer = EventRenderer::new(12);
        let chunk = "{\"time\":3600,\"stage\":\"Uploading release\",\"total\":1,\"task\":\"hello-lib/abc\",\"index\":1,\"state\":\"started\",\"progress\":0}\n\
                     {\"time\":3602,\"stage\":\"Uploading release\",\"total\":1,\"task\":\"hello-lib/abc\",\"index\":1,\"state\":\"finished\",\"progress\":100}\n\
                     {\"time\":3603,\"error\":{\"code\":100,\"message\":\"boom\"}}\n";
        assert_eq!(
            renderer.render(chunk),
            vec![
                "Task 12 | 01:00:02 | Uploading release: hello-lib/abc (00:00:02)".to_string(),
                "Task 12 | 01:00:03 | Error: boom".to_string(),
            ]
        );
    }
}
