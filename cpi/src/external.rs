//! `ExternalCpi`: any BOSH CPI executable (AWS, GCP, vSphere, … or our own `cpi` binary),
//! one process per call, as BOSH's `external_cpi.rb` runs them (reference §5.1).
//!
//! The environment is cleared except `PATH=/usr/sbin:/usr/bin:/sbin:/bin`, `TMPDIR` and
//! `HOME`; one JSON request goes to stdin, which is then closed; stdout is read to EOF and
//! parsed as the response; stderr is log text; the exit code is ignored (a CPI reports
//! failure in the response). Extra arguments for the executable and context properties (the
//! CPI config's, merged into `context` as BOSH does) are set with the builder methods.
//! `vm.stemcell.api_version` is not sent: the trait's `create_vm` does not know the
//! stemcell's agent API version.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::protocol::{self, API_VERSION, Request, Response};
use crate::{Cpi, CpiError, ErrorKind, Info, Result};

/// The `PATH` a CPI runs with.
const CPI_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How often a "busy" executable is tried (see [`spawn`]).
const SPAWN_ATTEMPTS: u32 = 10;

/// How many bytes of a non-JSON answer an error quotes.
const QUOTED_BYTES: usize = 200;

/// Receives what a call logged: method, request id, the CPI's stderr and the response's `log`.
pub type LogSink = Arc<dyn Fn(&CallLog<'_>) + Send + Sync>;

/// What one call logged.
#[derive(Debug)]
pub struct CallLog<'a> {
    /// The method called.
    pub method: &'a str,
    /// The request id sent in the context (`cpi-NNNNNN`).
    pub request_id: &'a str,
    /// What the executable wrote on stderr.
    pub stderr: &'a str,
    /// The response's `log` (empty when there was no readable response).
    pub log: &'a str,
}

/// A BOSH CPI executable.
#[derive(Clone)]
pub struct ExternalCpi {
    executable: PathBuf,
    arguments: Vec<OsString>,
    director_uuid: String,
    context: Map<String, Value>,
    log_sink: Option<LogSink>,
}

impl std::fmt::Debug for ExternalCpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalCpi")
            .field("executable", &self.executable)
            .field("arguments", &self.arguments)
            .field("director_uuid", &self.director_uuid)
            .finish_non_exhaustive()
    }
}

impl ExternalCpi {
    /// A CPI run as `executable`, called on behalf of the director `director_uuid`.
    pub fn new(executable: impl Into<PathBuf>, director_uuid: impl Into<String>) -> ExternalCpi {
        ExternalCpi {
            executable: executable.into(),
            arguments: Vec::new(),
            director_uuid: director_uuid.into(),
            context: Map::new(),
            log_sink: None,
        }
    }

    /// Command-line arguments for every call (BOSH passes none; our `cpi` takes `--root`).
    pub fn with_arguments<I, S>(mut self, arguments: I) -> ExternalCpi
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.arguments = arguments.into_iter().map(Into::into).collect();
        self
    }

    /// Properties merged into every request's `context` (a CPI config's `properties`).
    /// `director_uuid` and `request_id` are always ours.
    pub fn with_context(mut self, context: Map<String, Value>) -> ExternalCpi {
        self.context = context;
        self
    }

    /// Where each call's logs go.
    pub fn with_log_sink(mut self, sink: LogSink) -> ExternalCpi {
        self.log_sink = Some(sink);
        self
    }

    /// The executable.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    /// Runs one call and returns its `result`.
    pub fn call(&self, method: &str, arguments: Vec<Value>) -> Result<Value> {
        let request_id = request_id();
        let mut context = self.context.clone();
        context.insert(
            "director_uuid".into(),
            Value::from(self.director_uuid.clone()),
        );
        context.insert("request_id".into(), Value::from(request_id.clone()));
        let request = Request {
            method: method.to_string(),
            arguments,
            context,
            api_version: Some(API_VERSION),
        };
        let body = serde_json::to_vec(&request).map_err(|error| {
            CpiError::new(
                ErrorKind::CpiError,
                format!("cannot encode '{method}' request: {error}"),
            )
        })?;

        let mut command = Command::new(&self.executable);
        command
            .args(&self.arguments)
            .env_clear()
            .env("PATH", CPI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in ["TMPDIR", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let mut child = spawn(&mut command).map_err(|error| {
            CpiError::new(
                ErrorKind::CpiError,
                format!(
                    "cannot run cpi {} for '{method}': {error}",
                    self.executable.display()
                ),
            )
        })?;
        // Written from a thread so that a CPI that talks before it has read all of its
        // input cannot dead-lock us; a CPI that exits without reading is not our concern
        // here (its answer, or lack of one, says what happened).
        let stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&body);
            }
        });
        let output = child.wait_with_output().map_err(|error| {
            CpiError::new(
                ErrorKind::CpiError,
                format!(
                    "cannot read the answer of cpi {} to '{method}': {error}",
                    self.executable.display()
                ),
            )
        })?;
        let _ = writer.join();
        let stderr = String::from_utf8_lossy(&output.stderr);

        let response: std::result::Result<Response, _> = serde_json::from_slice(&output.stdout);
        if let Some(sink) = &self.log_sink {
            let log = response.as_ref().map(|r| r.log.as_str()).unwrap_or("");
            sink(&CallLog {
                method,
                request_id: &request_id,
                stderr: &stderr,
                log,
            });
        }
        let response = response.map_err(|error| {
            CpiError::new(
                ErrorKind::CpiError,
                unreadable_answer(&self.executable, method, &output.stdout, &stderr, &error),
            )
        })?;
        match response.error {
            Some(error) => Err(protocol::cpi_error(&error)),
            None => Ok(response.result),
        }
    }

    /// Runs a call and reads its result as a `T`.
    fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        arguments: Vec<Value>,
    ) -> Result<T> {
        let result = self.call(method, arguments)?;
        serde_json::from_value(result.clone())
            .map_err(|error| unexpected_result(method, &result, &error))
    }
}

/// Spawns, trying again while the executable is "busy": a file just written is, as long as
/// a process forked meanwhile by another thread still holds the descriptor it was written
/// through (until that process execs, within milliseconds).
fn spawn(command: &mut Command) -> std::io::Result<std::process::Child> {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(error)
                if error.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && attempt < SPAWN_ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn unreadable_answer(
    executable: &Path,
    method: &str,
    stdout: &[u8],
    stderr: &str,
    error: &serde_json::Error,
) -> String {
    let mut message = if stdout.is_empty() {
        format!(
            "cpi {} answered '{method}' with nothing",
            executable.display()
        )
    } else {
        let quoted = String::from_utf8_lossy(&stdout[..stdout.len().min(QUOTED_BYTES)]);
        let more = if stdout.len() > QUOTED_BYTES {
            "…"
        } else {
            ""
        };
        format!(
            "cpi {} answered '{method}' with something that is not a cpi response ({error}): \
             {quoted:?}{more}",
            executable.display()
        )
    };
    let stderr_tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    if !stderr_tail.is_empty() {
        let lines: Vec<&str> = stderr_tail.into_iter().rev().collect();
        message.push_str(&format!("; its stderr ends with: {}", lines.join(" | ")));
    }
    message
}

fn unexpected_result(method: &str, result: &Value, error: &dyn std::fmt::Display) -> CpiError {
    let mut shown = result.to_string();
    if shown.len() > QUOTED_BYTES {
        let mut end = QUOTED_BYTES;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    CpiError::new(
        ErrorKind::CpiError,
        format!("cpi answered '{method}' with an unexpected result ({error}): {shown}"),
    )
}

/// `cpi-` and six digits, as BOSH makes them (`cpi-` + rand(100000..999999)).
fn request_id() -> String {
    let random = uuid::Uuid::new_v4().as_u128();
    format!("cpi-{}", 100_000 + (random % 900_000))
}

fn string(value: &str) -> Value {
    Value::from(value)
}

impl Cpi for ExternalCpi {
    fn info(&self) -> Result<Info> {
        let result = self.call("info", vec![])?;
        // A CPI without `api_version` speaks v1.
        let api_version = match result.get("api_version") {
            None | Some(Value::Null) => 1,
            Some(version) => version
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| unexpected_result("info", &result, &"api_version"))?,
        };
        let stemcell_formats = match result.get("stemcell_formats") {
            None | Some(Value::Null) => Vec::new(),
            Some(formats) => serde_json::from_value(formats.clone())
                .map_err(|error| unexpected_result("info", &result, &error))?,
        };
        Ok(Info {
            api_version,
            stemcell_formats,
        })
    }

    fn create_stemcell(&self, image_path: &Path, cloud_properties: &Value) -> Result<String> {
        let image = image_path.to_str().ok_or_else(|| {
            CpiError::new(
                ErrorKind::CpiError,
                format!("stemcell image path {} is not UTF-8", image_path.display()),
            )
        })?;
        self.call_as(
            "create_stemcell",
            vec![string(image), cloud_properties.clone()],
        )
    }

    fn delete_stemcell(&self, stemcell_cid: &str) -> Result<()> {
        self.call("delete_stemcell", vec![string(stemcell_cid)])
            .map(drop)
    }

    fn create_vm(
        &self,
        agent_id: &str,
        stemcell_cid: &str,
        cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        let result = self.call(
            "create_vm",
            vec![
                string(agent_id),
                string(stemcell_cid),
                cloud_properties.clone(),
                networks.clone(),
                Value::from(disk_cids.to_vec()),
                environment.clone(),
            ],
        )?;
        match &result {
            // v1: the VM's CID alone; the networks are what was asked for.
            Value::String(vm_cid) => Ok((vm_cid.clone(), networks.clone())),
            // v2: `[vm_cid, networks]`.
            Value::Array(items) => match items.as_slice() {
                [Value::String(vm_cid), networks] => Ok((vm_cid.clone(), networks.clone())),
                [Value::String(vm_cid)] => Ok((vm_cid.clone(), networks.clone())),
                _ => Err(unexpected_result(
                    "create_vm",
                    &result,
                    &"expected [vm_cid, networks]",
                )),
            },
            _ => Err(unexpected_result(
                "create_vm",
                &result,
                &"expected [vm_cid, networks]",
            )),
        }
    }

    fn delete_vm(&self, vm_cid: &str) -> Result<()> {
        self.call("delete_vm", vec![string(vm_cid)]).map(drop)
    }

    fn has_vm(&self, vm_cid: &str) -> Result<bool> {
        self.call_as("has_vm", vec![string(vm_cid)])
    }

    fn reboot_vm(&self, vm_cid: &str) -> Result<()> {
        self.call("reboot_vm", vec![string(vm_cid)]).map(drop)
    }

    fn set_vm_metadata(&self, vm_cid: &str, metadata: &Value) -> Result<()> {
        self.call("set_vm_metadata", vec![string(vm_cid), metadata.clone()])
            .map(drop)
    }

    fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &Value,
        vm_hint: Option<&str>,
    ) -> Result<String> {
        self.call_as(
            "create_disk",
            vec![
                Value::from(size_mb),
                cloud_properties.clone(),
                vm_hint.map_or(Value::Null, string),
            ],
        )
    }

    fn delete_disk(&self, disk_cid: &str) -> Result<()> {
        self.call("delete_disk", vec![string(disk_cid)]).map(drop)
    }

    fn has_disk(&self, disk_cid: &str) -> Result<bool> {
        self.call_as("has_disk", vec![string(disk_cid)])
    }

    fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<Value> {
        self.call("attach_disk", vec![string(vm_cid), string(disk_cid)])
    }

    fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<()> {
        self.call("detach_disk", vec![string(vm_cid), string(disk_cid)])
            .map(drop)
    }

    fn get_disks(&self, vm_cid: &str) -> Result<Vec<String>> {
        self.call_as("get_disks", vec![string(vm_cid)])
    }

    fn set_disk_metadata(&self, disk_cid: &str, metadata: &Value) -> Result<()> {
        self.call(
            "set_disk_metadata",
            vec![string(disk_cid), metadata.clone()],
        )
        .map(drop)
    }

    /// Asks with our own `find_vm_by_agent_id` method; other CPIs do not know it and answer
    /// that the method is not known, which is `NotImplemented`.
    fn find_vm_by_agent_id(&self, agent_id: &str) -> Result<Option<String>> {
        self.call_as("find_vm_by_agent_id", vec![string(agent_id)])
    }

    /// Asks with our own `agent_log_tail` method; other CPIs do not know it and answer
    /// with an error, which is `None` here.
    fn agent_log_tail(&self, vm_cid: &str, lines: usize) -> Option<Vec<String>> {
        self.call_as("agent_log_tail", vec![string(vm_cid), Value::from(lines)])
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_boshs() {
        for _ in 0..100 {
            let id = request_id();
            let digits = id.strip_prefix("cpi-").unwrap();
            assert_eq!(digits.len(), 6, "{id}");
            assert!(digits.parse::<u32>().unwrap() >= 100_000);
        }
    }
}
