//! `config/bpm.yml`: the processes a job runs (bpm's format, `bpm:docs/config.md`).
//!
//! We read `name`, `executable`, `args`, `env`, `workdir`, `shutdown_signal`, `limits`
//! (`open_files`, `processes`, `memory`, `core_file_size`), `hooks.pre_start`,
//! `ephemeral_disk` and `persistent_disk`. The agent runs processes without containers, so
//! bpm's container settings cannot be applied: `capabilities` (bpm keeps only those; here a
//! process has all of the agent's), `unsafe` (`privileged`, `unrestricted_volumes`) and
//! limits other than the four above are refused with an error naming the process and the
//! key, not ignored, so nobody believes a process is confined when it is not.
//! `additional_volumes` is accepted: without a container every path is reachable anyway.
//! Scalars in `args` and `env` may be numbers or booleans in the YAML; they are passed as
//! their text.
//!
//! Limits are applied by starting the process through util-linux's `prlimit`
//! (`prlimit --nofile=N -- executable args…`): it sets the limits on itself and then execs
//! the executable, so they hold from the first instruction, are inherited by children, and
//! need no code between fork and exec (our crates forbid `unsafe`, which `pre_exec` needs).
//! `memory` becomes `RLIMIT_DATA` (heap and private writable mappings), the closest rlimit
//! to bpm's cgroup limit; `processes` is `RLIMIT_NPROC`, which the kernel counts per user
//! and does not enforce for root.
//!
//! **Invariant:** pure; [`parse`] reports the first problem with the process it belongs to.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml::Value;

use crate::layout::check_name;

/// A parsed `bpm.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpmConfig {
    /// The processes, in file order.
    pub processes: Vec<BpmProcess>,
}

/// One process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpmProcess {
    /// Its name (logs, pid file).
    pub name: String,
    /// What to run.
    pub executable: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (besides `PATH`, `TMPDIR` and `HOME`).
    pub env: BTreeMap<String, String>,
    /// Where it runs (default: the job's directory).
    pub workdir: Option<String>,
    /// What `stop` sends first.
    pub shutdown_signal: ShutdownSignal,
    /// Resource limits.
    pub limits: Limits,
    /// Run before each start of the process; a failure counts as a failed start.
    pub pre_start_hook: Option<String>,
    /// Whether the process wants `<root>/data/<job>` (always created).
    pub ephemeral_disk: bool,
    /// Whether the process wants `<root>/store/<job>` (created when it starts).
    pub persistent_disk: bool,
}

/// The signals `shutdown_signal` may name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// `TERM`, the default.
    #[default]
    Term,
    /// `INT`.
    Int,
    /// `QUIT`.
    Quit,
    /// `HUP`.
    Hup,
    /// `USR1`.
    Usr1,
    /// `USR2`.
    Usr2,
}

impl ShutdownSignal {
    /// `TERM`, `SIGTERM`, `term` …
    pub fn parse(text: &str) -> Option<ShutdownSignal> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Some(match name {
            "TERM" => ShutdownSignal::Term,
            "INT" => ShutdownSignal::Int,
            "QUIT" => ShutdownSignal::Quit,
            "HUP" => ShutdownSignal::Hup,
            "USR1" => ShutdownSignal::Usr1,
            "USR2" => ShutdownSignal::Usr2,
            _ => return None,
        })
    }

    /// The name without `SIG`.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Term => "TERM",
            ShutdownSignal::Int => "INT",
            ShutdownSignal::Quit => "QUIT",
            ShutdownSignal::Hup => "HUP",
            ShutdownSignal::Usr1 => "USR1",
            ShutdownSignal::Usr2 => "USR2",
        }
    }
}

/// `limits`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_NPROC`.
    pub processes: Option<u64>,
    /// Bytes, as `RLIMIT_DATA`.
    pub memory: Option<u64>,
    /// `RLIMIT_CORE`, bytes.
    pub core_file_size: Option<u64>,
}

impl Limits {
    /// `prlimit` options for these limits (soft = hard); empty when there are none.
    pub fn prlimit_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |option: &str, value: Option<u64>| {
            if let Some(value) = value {
                args.push(format!("--{option}={value}:{value}"));
            }
        };
        push("nofile", self.open_files);
        push("nproc", self.processes);
        push("data", self.memory);
        push("core", self.core_file_size);
        args
    }
}

impl BpmProcess {
    /// The program and arguments to spawn: the executable itself, or `prlimit` in front of
    /// it when there are limits.
    pub fn command_line(&self) -> (String, Vec<String>) {
        let limits = self.limits.prlimit_args();
        if limits.is_empty() {
            return (self.executable.clone(), self.args.clone());
        }
        let mut args = limits;
        args.push("--".to_string());
        args.push(self.executable.clone());
        args.extend(self.args.iter().cloned());
        ("prlimit".to_string(), args)
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    processes: Option<Vec<RawProcess>>,
}

#[derive(Deserialize)]
struct RawProcess {
    name: Option<String>,
    executable: Option<String>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    env: BTreeMap<String, Value>,
    workdir: Option<String>,
    shutdown_signal: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    capabilities: Option<Value>,
    #[serde(default, rename = "unsafe")]
    unsafe_settings: Option<Value>,
    #[serde(default)]
    ephemeral_disk: bool,
    #[serde(default)]
    persistent_disk: bool,
}

#[derive(Default, Deserialize)]
struct RawLimits {
    open_files: Option<u64>,
    processes: Option<u64>,
    memory: Option<Value>,
    core_file_size: Option<u64>,
    /// Limits bpm may know and we do not apply.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Default, Deserialize)]
struct RawHooks {
    pre_start: Option<String>,
}

/// Parses `bpm.yml` of `job`. A process without a name is named after the job, as in bpm.
pub fn parse(job: &str, text: &str) -> Result<BpmConfig, String> {
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let Some(raw_processes) = raw.processes else {
        return Err("no processes".to_string());
    };
    let mut names = BTreeSet::new();
    let mut processes = Vec::with_capacity(raw_processes.len());
    for (index, raw) in raw_processes.into_iter().enumerate() {
        let name = raw.name.clone().unwrap_or_else(|| job.to_string());
        let at = format!("processes[{index}] ({name})");
        check_name("process", &name).map_err(|e| format!("{at}: {e}"))?;
        if !names.insert(name.clone()) {
            return Err(format!("{at}: duplicate process name"));
        }
        check_not_applied(&raw).map_err(|reason| format!("{at}: {reason}"))?;
        let executable = raw
            .executable
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| format!("{at}: executable is required"))?;
        let args = raw
            .args
            .iter()
            .enumerate()
            .map(|(i, v)| scalar_text(v).ok_or_else(|| format!("{at}: args[{i}] is not a scalar")))
            .collect::<Result<Vec<_>, _>>()?;
        let env = raw
            .env
            .iter()
            .map(|(k, v)| {
                scalar_text(v)
                    .map(|v| (k.clone(), v))
                    .ok_or_else(|| format!("{at}: env.{k} is not a scalar"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let shutdown_signal = match raw.shutdown_signal {
            None => ShutdownSignal::Term,
            Some(text) => ShutdownSignal::parse(&text).ok_or_else(|| {
                format!(
                    "{at}: shutdown_signal {text:?} is not one of TERM, INT, QUIT, HUP, USR1, USR2"
                )
            })?,
        };
        let memory = match &raw.limits.memory {
            None => None,
            Some(value) => Some(
                scalar_text(value)
                    .and_then(|text| parse_bytes(&text))
                    .ok_or_else(|| {
                        format!("{at}: limits.memory {value:?} is not a size like 512M or 1G")
                    })?,
            ),
        };
        processes.push(BpmProcess {
            name,
            executable,
            args,
            env,
            workdir: raw.workdir.filter(|w| !w.is_empty()),
            shutdown_signal,
            limits: Limits {
                open_files: raw.limits.open_files,
                processes: raw.limits.processes,
                memory,
                core_file_size: raw.limits.core_file_size,
            },
            pre_start_hook: raw.hooks.pre_start.filter(|h| !h.is_empty()),
            ephemeral_disk: raw.ephemeral_disk,
            persistent_disk: raw.persistent_disk,
        });
    }
    Ok(BpmConfig { processes })
}

/// Refuses the settings of `raw` that the agent cannot apply (see the module's doc).
fn check_not_applied(raw: &RawProcess) -> Result<(), String> {
    const WHY: &str = "the agent runs processes without containers";
    if let Some(capabilities) = &raw.capabilities
        && !is_empty(capabilities)
    {
        return Err(format!(
            "capabilities {} are not applied: {WHY}, with all of the agent's capabilities; \
             remove the key",
            inline(capabilities)
        ));
    }
    if let Some(settings) = &raw.unsafe_settings {
        let Some(settings) = settings.as_mapping() else {
            if settings.is_null() {
                return Ok(());
            }
            return Err(format!("unsafe {} is not a map", inline(settings)));
        };
        for (key, value) in settings {
            if !is_empty(value) {
                let key = key.as_str().map_or_else(|| inline(key), str::to_string);
                return Err(format!(
                    "unsafe.{key} {} is not applied: {WHY}; remove the key",
                    inline(value)
                ));
            }
        }
    }
    if let Some(key) = raw.limits.other.keys().next() {
        return Err(format!(
            "limits.{key} is not applied: the agent applies only open_files, processes, \
             memory and core_file_size; remove the key"
        ));
    }
    Ok(())
}

/// `null`, `false`, `[]`, `{}` and `""`: nothing asked for.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(map) => map.is_empty(),
        _ => false,
    }
}

/// A YAML value on one line (flow style), for messages.
fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(inline).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Mapping(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", inline(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => serde_yaml::to_string(other)
            .map(|text| text.trim().to_string())
            .unwrap_or_default(),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `1024`, `512K`, `512M`, `1G`, `1gb`, `2GiB` → bytes (powers of 1024, as docker's
/// `RAMInBytes` that bpm uses).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(yaml: &str, expected: &str) {
        assert_eq!(parse("web", yaml).unwrap_err(), expected);
    }

    #[test]
    fn a_full_process() {
        let config = parse(
            "web",
            r#"
processes:
- name: server
  executable: /var/vcap/packages/server/bin/serve
  args: [--port, 2424, --verbose, true]
  env: {FOO: BAR, PORT: 8080}
  workdir: /var/vcap/data/web
  shutdown_signal: INT
  capabilities: []
  unsafe: {privileged: false}
  additional_volumes: [{path: /var/vcap/data/shared, writable: true}]
  limits: {memory: 1G, open_files: 100000, processes: 10}
  hooks: {pre_start: /var/vcap/jobs/web/bin/bpm-pre-start}
  ephemeral_disk: true
  persistent_disk: true
- executable: /bin/true
"#,
        )
        .unwrap();
        let server = &config.processes[0];
        assert_eq!(server.name, "server");
        assert_eq!(server.args, ["--port", "2424", "--verbose", "true"]);
        assert_eq!(server.env["PORT"], "8080");
        assert_eq!(server.shutdown_signal, ShutdownSignal::Int);
        assert_eq!(server.limits.memory, Some(1 << 30));
        assert_eq!(server.limits.open_files, Some(100_000));
        assert_eq!(
            server.pre_start_hook.as_deref(),
            Some("/var/vcap/jobs/web/bin/bpm-pre-start")
        );
        assert!(server.persistent_disk);
        assert_eq!(config.processes[1].name, "web");
        assert_eq!(config.processes[1].shutdown_signal, ShutdownSignal::Term);
    }

    #[test]
    fn limits_go_through_prlimit() {
        let config = parse(
            "web",
            "processes: [{name: a, executable: /bin/a, args: [-x], limits: {open_files: 64, memory: 512M}}]",
        )
        .unwrap();
        let (program, args) = config.processes[0].command_line();
        assert_eq!(program, "prlimit");
        assert_eq!(
            args,
            [
                "--nofile=64:64",
                "--data=536870912:536870912",
                "--",
                "/bin/a",
                "-x"
            ]
        );
        let plain = parse(
            "web",
            "processes: [{name: a, executable: /bin/a, args: [-x]}]",
        )
        .unwrap();
        assert_eq!(
            plain.processes[0].command_line(),
            ("/bin/a".to_string(), vec!["-x".to_string()])
        );
    }

    #[test]
    fn problems_name_the_process() {
        check_error(
            "processes: [{name: a}]",
            "processes[0] (a): executable is required",
        );
        check_error(
            "processes: [{name: a, executable: x}, {name: a, executable: y}]",
            "processes[1] (a): duplicate process name",
        );
        check_error(
            "processes: [{name: a, executable: x, shutdown_signal: STOP}]",
            "processes[0] (a): shutdown_signal \"STOP\" is not one of TERM, INT, QUIT, HUP, USR1, USR2",
        );
        check_error(
            "processes: [{name: a, executable: x, limits: {memory: lots}}]",
            "processes[0] (a): limits.memory String(\"lots\") is not a size like 512M or 1G",
        );
        check_error(
            "processes: [{name: ../a, executable: x}]",
            "processes[0] (../a): process name \"../a\" is not a plain file name",
        );
        check_error("{}", "no processes");
        check_error(
            "processes: [{name: a, executable: x, env: {A: [1]}}]",
            "processes[0] (a): env.A is not a scalar",
        );
    }

    #[test]
    fn settings_the_agent_does_not_apply_are_refused() {
        check_error(
            "processes: [{name: a, executable: x, capabilities: [NET_BIND_SERVICE, SYS_TIME]}]",
            "processes[0] (a): capabilities [\"NET_BIND_SERVICE\", \"SYS_TIME\"] are not \
             applied: the agent runs processes without containers, with all of the agent's \
             capabilities; remove the key",
        );
        check_error(
            "processes: [{name: a, executable: x, unsafe: {privileged: true}}]",
            "processes[0] (a): unsafe.privileged true is not applied: the agent runs \
             processes without containers; remove the key",
        );
        check_error(
            "processes: [{name: a, executable: x, unsafe: {unrestricted_volumes: [{path: /}]}}]",
            "processes[0] (a): unsafe.unrestricted_volumes [{\"path\": \"/\"}] is not applied: \
             the agent runs processes without containers; remove the key",
        );
        check_error(
            "processes: [{name: a, executable: x, limits: {open_files: 8, cpu_shares: 512}}]",
            "processes[0] (a): limits.cpu_shares is not applied: the agent applies only \
             open_files, processes, memory and core_file_size; remove the key",
        );
        // Empty settings ask for nothing.
        parse(
            "web",
            "processes: [{name: a, executable: x, capabilities: [], unsafe: {privileged: false, unrestricted_volumes: []}}]",
        )
        .unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("512K"), Some(512 * 1024));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("2 MB"), Some(2 << 20));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("1X"), None);
    }

    #[test]
    fn signals() {
        assert_eq!(ShutdownSignal::parse("SIGTERM"), Some(ShutdownSignal::Term));
        assert_eq!(ShutdownSignal::parse("quit"), Some(ShutdownSignal::Quit));
        assert_eq!(ShutdownSignal::parse("KILL"), None);
    }
}
