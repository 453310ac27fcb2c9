//! The CLI's way to a director: finding it (flags and environment, the CLI config, else the
//! dev director of this user, started when none answers), a progress bar for uploads, and
//! rendering a task's event log. The calls themselves are [`director_api::client::Client`]'s.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use director_api::client::{Client, Progress, UploadKind};
use director_api::tasks::{EventState, Task, TaskEvent};

use crate::api::DevRecord;
use crate::config::{self, ClientConfig};

/// Why the CLI could not talk to a director; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A call failed (the director's `description`, or why it could not be reached).
    #[error(transparent)]
    Api(#[from] director_api::client::ClientError),
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
    /// The CLI config cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// The `--director` value that names this user's dev director, whatever the CLI config says.
pub const DEV_TARGET: &str = "dev";

/// Finds the director: flags/environment (`dev` for the dev director), then the CLI config,
/// then the dev director (started when nothing answers; `say` prints the one line that says
/// so).
pub async fn connect(
    flags: &TargetFlags,
    say: &mut dyn FnMut(&str),
) -> Result<Client, ClientError> {
    if flags.url.as_deref() == Some(DEV_TARGET) {
        return dev(say).await;
    }
    if let Some(url) = &flags.url {
        return Ok(Client::new(
            url,
            flags.token.clone(),
            flags.ca_cert.as_deref(),
        )?);
    }
    let saved = ClientConfig::load().map_err(ClientError::Config)?;
    if let (Some(url), false) = (&saved.url, saved.dev) {
        let token = flags
            .token
            .clone()
            .or(saved.token.clone().map(|token| token.0));
        let ca = flags.ca_cert.clone().or(saved.ca_cert.clone());
        return Ok(Client::new(url, token, ca.as_deref())?);
    }
    dev(say).await
}

/// The dev director of this user (`$XDG_DATA_HOME/director`), started if needed. It runs
/// on this host as this user, so uploads name local files instead of sending them.
pub async fn dev(say: &mut dyn FnMut(&str)) -> Result<Client, ClientError> {
    let data_dir = config::data_dir();
    if let Some(record) = DevRecord::load(&data_dir) {
        match recorded_dev_director(&record).await? {
            DevListener::Ours(client) => return Ok(client.reading_local_files()),
            DevListener::Gone => {}
            DevListener::Stranger(why) => say(&stranger_message(&record.url, &why)),
        }
    }
    Ok(start_dev_director(&data_dir, say)
        .await?
        .reading_local_files())
}

/// What listens at the URL a dev director recorded.
pub enum DevListener {
    /// The dev director that wrote the record: a client with its token.
    Ours(Client),
    /// Nothing (it stopped or died).
    Gone,
    /// Something that could not prove it holds the record's token, and why.
    Stranger(String),
}

/// Checks, before the token goes anywhere, that the listener at `record.url` is the dev
/// director that wrote the record: after that director died, any process (another user's,
/// a test's director) may have taken its port. The listener must answer a fresh random
/// nonce, sent without the token, with [`crate::api::challenge_proof`], which needs the
/// token and binds the recorded URL.
pub async fn recorded_dev_director(record: &DevRecord) -> Result<DevListener, ClientError> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| ClientError::Io {
        context: "drawing a random challenge".to_string(),
        source: std::io::Error::other(e),
    })?;
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let anonymous = Client::new(&record.url, None, None)?;
    let answer = anonymous
        .challenge(
            &director_api::ChallengeRequest {
                nonce: nonce.clone(),
            },
            // A refused connection fails at once; only a listener that accepts and stays
            // silent waits this long (a busy dev director is not taken for a dead one).
            Duration::from_secs(10),
        )
        .await;
    let proof = match answer {
        Ok(answer) => answer.proof,
        Err(director_api::client::ClientError::Unreachable { .. }) => {
            return Ok(DevListener::Gone);
        }
        Err(e) => {
            return Ok(DevListener::Stranger(format!(
                "it does not answer the challenge: {e}"
            )));
        }
    };
    let expected =
        crate::api::challenge_proof(&record.token, &record.url, &nonce).unwrap_or_default();
    if expected.is_empty()
        || proof.len() != expected.len()
        || !openssl::memcmp::eq(proof.as_bytes(), expected.as_bytes())
    {
        return Ok(DevListener::Stranger(
            "its answer to the challenge does not prove it holds the dev director's token"
                .to_string(),
        ));
    }
    Ok(DevListener::Ours(Client::new(
        &record.url,
        Some(record.token.clone()),
        None,
    )?))
}

/// What the CLI says of a listener that is not the dev director it started.
pub fn stranger_message(url: &str, why: &str) -> String {
    format!(
        "the listener at {url} is not the dev director this CLI started ({why}); the dev director's token was not sent to it"
    )
}

/// Uploads `file` (`upload-release`, `upload-stemcell`, a deploy's local releases), with a
/// progress bar on a terminal while it streams; answers the queued task.
pub async fn upload(
    client: &Client,
    kind: UploadKind,
    file: &Path,
    sha256: Option<&str>,
    fix: bool,
) -> Result<Task, director_api::client::ClientError> {
    let bar = (!client.reads_local_files() && std::io::stderr().is_terminal())
        .then(|| upload_bar(file))
        .flatten();
    let progress = bar.clone().map(|bar| {
        let progress: Progress = Arc::new(move |sent| bar.set_position(sent));
        progress
    });
    let task = client.upload(kind, file, sha256, fix, progress).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    task
}

fn upload_bar(file: &Path) -> Option<indicatif::ProgressBar> {
    let size = std::fs::metadata(file).ok()?.len();
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
    // The log is the director's, private as its other files (it may name paths and users).
    let log = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).append(true),
        0o600,
    )
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
                if client.info_within(Duration::from_secs(2)).await.is_ok() {
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

    /// The lines to print for a chunk of the event log, with control characters escaped
    /// (events carry text from agents: stderr tails, process names).
    pub fn render(&mut self, chunk: &str) -> Vec<String> {
        self.render_raw(chunk)
            .iter()
            .map(|line| printable(line))
            .collect()
    }

    fn render_raw(&mut self, chunk: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in chunk.lines() {
            let Ok(event) = serde_json::from_str::<TaskEvent>(line) else {
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
                EventState::Started => {
                    self.started.insert(key, event.time);
                }
                EventState::InProgress => {}
                EventState::Finished | EventState::Failed => {
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
                    if state == EventState::Failed {
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

/// `text` safe to print on a terminal: control characters other than newline and tab
/// become visible escapes (`\x1b`, `\r`, `\u{9b}`), so text that comes from agents (errand
/// output, stderr tails, process names) cannot move the cursor, retitle the window or hide
/// what came before it.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
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
            let Ok(event) = serde_json::from_str::<TaskEvent>(line) else {
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
                EventState::Started => {
                    steps.insert(step, String::new());
                }
                EventState::InProgress => {
                    let status = event.data.and_then(|d| d.status).unwrap_or_default();
                    steps.insert(step, status);
                }
                EventState::Finished | EventState::Failed => {
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
    fn control_characters_from_agents_are_escaped() {
        assert_eq!(
            printable("red \u{1b}[31mtext\u{7}\r\nnext\tcol \u{9b}2J"),
            "red \\x1b[31mtext\\x07\\r\nnext\tcol \\u{9b}2J"
        );
        let mut renderer = EventRenderer::new(7);
        let lines = renderer
            .render(r#"{"time":1,"error":{"code":1,"message":"stderr: \u001b]0;owned\u0007"}}"#);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].ends_with("Error: stderr: \\x1b]0;owned\\x07"),
            "{lines:?}"
        );
    }

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
