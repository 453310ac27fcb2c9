//! A local VM's processes: the agent started in a mount namespace of its own where
//! `/var/vcap` is the VM's `vcap` directory, and the whole process tree stopped again.
//!
//! The agent runs as `unshare --mount --propagation private -- sh -c 'mount --bind "$1"
//! /var/vcap && … && exec /var/vcap/bosh/bin/bosh-agent --settings …' sh <vmdir>/vcap …`, so
//! its pid is the agent's (unshare and sh both exec). Without the privilege to make a mount
//! namespace (not root), `--user --map-root-user` is added: a user namespace where we are
//! root. Which of the two works is found out once per process by trying each with `true`.
//! The mount namespace is a copy of the host's; mounts made in it do not propagate back. Its
//! `/etc/resolv.conf` is the VM's own copy of the host's ([`PRIVATE_RESOLVER`]), which the
//! agent points at its DNS server.
//!
//! What the namespace hides ([`Hiding`]): after `/var/vcap` is bound, an empty read-only
//! tmpfs is mounted over each hidden directory (the director's data directory and the CPI's
//! root: the director's token, the state database, blobs, other VMs' settings with their bus
//! passwords), and the directories that must stay reachable below them (the persistent
//! disks, which the agent binds by their host path when one is attached, also after the
//! start) are bound back through a descriptor opened before the tmpfs covered them. Other
//! host paths stay visible. This keeps jobs from reading those files by accident or by a
//! path; it is not a security boundary against a job running as root (on a root host it can
//! unmount the tmpfs or enter the host's namespaces through `/proc`): local VMs are for
//! development, with trusted releases.
//!
//! A VM's processes are every process in a mount namespace that has the VM's `vcap`
//! directory on `/var/vcap` (the agent's, which its descendants inherit, and copies of it a
//! job may have made), plus all their descendants. The namespace's inode is recorded in
//! `vm.json` but not trusted alone: inode numbers are reused once a namespace is gone, and a
//! CPI that died while starting an agent recorded none. The host's namespace (ours and
//! pid 1's) is never a VM's, whatever is mounted in it. Stopping is TERM, a grace period,
//! then KILL until nothing is left.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

/// Where the VM's `vcap` directory appears in its namespace.
pub const VCAP_MOUNT: &str = "/var/vcap";
/// The agent, as the namespace sees it.
pub const AGENT_IN_VM: &str = "/var/vcap/bosh/bin/bosh-agent";
/// The settings file, as the namespace sees it.
pub const SETTINGS_IN_VM: &str = "/var/vcap/bosh/settings.json";

/// Gives the VM a resolver configuration of its own: a copy of the host's, bound over
/// `/etc/resolv.conf` in the namespace, which the agent is told it may rewrite (to ask its
/// DNS server first). When the host has none, or the copy cannot be bound, the agent is told
/// nothing and the VM starts all the same: the host's file is never the agent's to change.
const PRIVATE_RESOLVER: &str = "[ ! -e /etc/resolv.conf ] || { cat /etc/resolv.conf > /var/vcap/bosh/resolv.conf && mount --bind /var/vcap/bosh/resolv.conf /etc/resolv.conf && export BOSH_AGENT_RESOLV_CONF=/etc/resolv.conf; } || true";

/// How long an agent may take to be exec'd in its namespace.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an agent that could not be executed is tried (see [`start_agent`]).
const START_ATTEMPTS: u32 = 5;
/// The pause between those tries.
const START_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a freshly exec'd agent must stay up to count as started.
const START_SETTLE: Duration = Duration::from_millis(100);
/// How long processes get between TERM and KILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long KILLed processes get to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling interval while waiting for processes.
const POLL: Duration = Duration::from_millis(20);

/// How namespaces are made on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `unshare --mount`: we may make mount namespaces (root).
    Root,
    /// `unshare --user --map-root-user --mount`: a user namespace first.
    User,
}

impl Mode {
    fn unshare_arguments(self) -> &'static [&'static str] {
        match self {
            Mode::Root => &["--mount", "--propagation", "private", "--"],
            Mode::User => &[
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
                "--",
            ],
        }
    }
}

/// The mode that works here, found out once.
pub fn mode() -> Result<Mode, String> {
    static MODE: OnceLock<Result<Mode, String>> = OnceLock::new();
    MODE.get_or_init(detect_mode).clone()
}

fn detect_mode() -> Result<Mode, String> {
    let mut failures = Vec::new();
    for mode in [Mode::Root, Mode::User] {
        let output = Command::new("unshare")
            .args(mode.unshare_arguments())
            .arg("true")
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) if output.status.success() => return Ok(mode),
            Ok(output) => failures.push(format!(
                "unshare {}: {}",
                mode.unshare_arguments().join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => failures.push(format!("cannot run unshare: {error}")),
        }
    }
    Err(format!(
        "cannot make a mount namespace for local vms on this host ({})",
        failures.join("; ")
    ))
}

/// Makes sure the host has the `/var/vcap` mount point (it stays empty: VMs bind their
/// own directory onto it, each in its own namespace).
pub fn ensure_mount_point(mode: Mode) -> Result<(), String> {
    let mount_point = Path::new(VCAP_MOUNT);
    if mount_point.is_dir() {
        return Ok(());
    }
    match mode {
        Mode::Root => fs::create_dir_all(mount_point)
            .map_err(|error| format!("cannot create the mount point {VCAP_MOUNT}: {error}")),
        Mode::User => Err(format!(
            "local vms need the directory {VCAP_MOUNT} on the host as a mount point, and \
             only root can create it: run `sudo mkdir -p {VCAP_MOUNT}` once"
        )),
    }
}

/// The host directories a VM's namespace hides, and those below them it keeps reachable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hiding {
    /// Covered by an empty tmpfs (absolute, existing, none below another).
    covered: Vec<PathBuf>,
    /// Bound back below a covered directory (absolute, existing).
    kept: Vec<PathBuf>,
}

impl Hiding {
    /// Hides the existing directories of `covered` (a directory below another is covered
    /// with it) except `kept` (each made visible again at its own path). Paths are made
    /// canonical; a covered directory that holds [`VCAP_MOUNT`] is refused (the VM would
    /// lose its own files).
    pub fn new(covered: &[PathBuf], kept: &[PathBuf]) -> Result<Hiding, String> {
        let mut canonical = Vec::new();
        for dir in covered {
            let Ok(dir) = fs::canonicalize(dir) else {
                continue;
            };
            if Path::new(VCAP_MOUNT).starts_with(&dir) {
                return Err(format!(
                    "cannot hide {} from local vms: their {VCAP_MOUNT} is below it",
                    dir.display()
                ));
            }
            canonical.push(dir);
        }
        canonical.sort();
        let mut outermost: Vec<PathBuf> = Vec::new();
        for dir in canonical {
            if !outermost.iter().any(|outer| dir.starts_with(outer)) {
                outermost.push(dir);
            }
        }
        let mut kept_below = Vec::new();
        for dir in kept {
            let dir = fs::canonicalize(dir)
                .map_err(|error| format!("cannot find {}: {error}", dir.display()))?;
            if outermost.iter().any(|outer| dir.starts_with(outer)) {
                kept_below.push(dir);
            }
        }
        // `sh` redirects only descriptors 0 to 9; 3 to 9 are ours.
        if kept_below.len() > 7 {
            return Err("local vms can keep at most 7 hidden directories reachable".to_string());
        }
        Ok(Hiding {
            covered: outermost,
            kept: kept_below,
        })
    }

    /// The shell commands (after `/var/vcap` is bound) that hide and keep, the paths they
    /// name as positional parameters from `$first` on, and those paths in order.
    fn commands<'a>(&'a self, first: usize) -> (String, Vec<&'a Path>) {
        let mut commands = String::new();
        let mut paths: Vec<&Path> = Vec::new();
        // `"${n}"` for the next path, which is pushed.
        let mut parameter = |dir: &'a Path| {
            paths.push(dir);
            format!("\"${{{}}}\"", first + paths.len() - 1)
        };
        let mut kept = Vec::new();
        for (index, dir) in self.kept.iter().enumerate() {
            let name = parameter(dir);
            let fd = 3 + index;
            commands.push_str(&format!(" && exec {fd}<{name}"));
            kept.push((fd, name));
        }
        let mut covered = Vec::new();
        for dir in &self.covered {
            let name = parameter(dir);
            commands.push_str(&format!(
                " && mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec hidden-by-cpi {name}"
            ));
            covered.push(name);
        }
        for (fd, name) in &kept {
            commands.push_str(&format!(
                " && mkdir -p {name} && mount --no-canonicalize --bind /proc/self/fd/{fd} {name} && exec {fd}<&-"
            ));
        }
        for name in &covered {
            commands.push_str(&format!(" && mount -o remount,bind,ro {name}"));
        }
        (commands, paths)
    }
}

/// A started agent.
pub struct Started {
    /// The agent's pid.
    pub pid: u32,
    /// The inode of its mount namespace.
    pub mount_namespace: u64,
    /// The child handle (the caller reaps it).
    pub child: Child,
}

/// Starts the agent of the VM whose `vcap` directory is `vcap`, its output appended to
/// `log`, and waits until it runs in its namespace. On failure, nothing it started is left.
///
/// The agent gets a clean environment (`PATH`, `HOME`, and `RUST_LOG`/`RUST_BACKTRACE` when
/// set), as on a real VM: the director's own holds its secrets.
pub fn start_agent(
    mode: Mode,
    vcap: &Path,
    log: &Path,
    hiding: &Hiding,
) -> Result<Started, String> {
    let mut attempt = 1;
    loop {
        let mut child = spawn_agent(mode, vcap, log, hiding)?;
        let pid = child.id();
        match wait_until_started(&mut child) {
            Ok(mount_namespace) => {
                return Ok(Started {
                    pid,
                    mount_namespace,
                    child,
                });
            }
            // 126: the agent could not be executed. A file just written (the agent copied
            // into the VM) is "busy" while any process forked meanwhile by another thread
            // of ours still holds the descriptor it was written through, until that process
            // execs; this passes within milliseconds.
            Err(StartFailure::Exited(status))
                if status.code() == Some(126) && attempt < START_ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(START_RETRY_PAUSE);
            }
            Err(failure) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure.to_string());
            }
        }
    }
}

fn spawn_agent(mode: Mode, vcap: &Path, log: &Path, hiding: &Hiding) -> Result<Child, String> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| format!("cannot open {}: {error}", log.display()))?;
    let stderr = log_file
        .try_clone()
        .map_err(|error| format!("cannot open {}: {error}", log.display()))?;
    let (hide, hidden_paths) = hiding.commands(2);
    let script = format!(
        "mount --bind \"$1\" {VCAP_MOUNT}{hide} && {{ {PRIVATE_RESOLVER}; }} && exec {AGENT_IN_VM} --settings {SETTINGS_IN_VM}"
    );
    let mut command = Command::new("unshare");
    command
        .args(mode.unshare_arguments())
        .args(["sh", "-c", &script, "sh"])
        .arg(vcap)
        .args(hidden_paths)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr)
        // Its own process group: a Ctrl-C meant for the director does not reach VMs.
        .process_group(0);
    let home = match mode {
        Mode::Root => Some(PathBuf::from("/root")),
        Mode::User => std::env::var_os("HOME").map(PathBuf::from),
    };
    if let Some(home) = home {
        command.env("HOME", home);
    }
    for name in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .spawn()
        .map_err(|error| format!("cannot run unshare: {error}"))
}

/// Why an agent did not start.
enum StartFailure {
    /// It (or the shell before it) exited.
    Exited(std::process::ExitStatus),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Exited(status) => write!(f, "the agent exited at once ({status})"),
            StartFailure::Other(message) => f.write_str(message),
        }
    }
}

/// Waits until the child has exec'd the agent in a namespace of its own; returns that
/// namespace's inode.
fn wait_until_started(child: &mut Child) -> Result<u64, StartFailure> {
    let pid = child.id();
    let host_namespace = own_mount_namespace().map_err(StartFailure::Other)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut started_at: Option<(Instant, u64)> = None;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|error| StartFailure::Other(format!("cannot wait for the agent: {error}")))?
        {
            return Err(StartFailure::Exited(status));
        }
        match started_at {
            Some((since, namespace)) if since.elapsed() >= START_SETTLE => return Ok(namespace),
            Some(_) => {}
            None => {
                let namespace = mount_namespace(pid);
                // The agent's own argv[0], or an argument of its interpreter's.
                let exec_done = arguments(pid).iter().any(|a| a == AGENT_IN_VM);
                if let Some(namespace) = namespace.filter(|ns| *ns != host_namespace)
                    && exec_done
                {
                    started_at = Some((Instant::now(), namespace));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(StartFailure::Other(format!(
                "the agent did not start within {}s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// The inode of this process's mount namespace.
pub fn own_mount_namespace() -> Result<u64, String> {
    read_namespace(Path::new("/proc/self/ns/mnt"))
        .ok_or_else(|| "cannot read /proc/self/ns/mnt".to_string())
}

/// The inode of `pid`'s mount namespace (`None` when it is gone or a zombie).
pub fn mount_namespace(pid: u32) -> Option<u64> {
    read_namespace(&PathBuf::from(format!("/proc/{pid}/ns/mnt")))
}

fn read_namespace(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

fn arguments(pid: u32) -> Vec<String> {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    cmdline
        .split(|b| *b == 0)
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect()
}

/// State and parent pid from `/proc/<pid>/stat` (the name in parentheses may hold anything).
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Every live process with its parent pid.
fn processes() -> HashMap<u32, u32> {
    let mut parents = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((state, parent)) = stat_fields(&stat)
            && state != 'Z'
        {
            parents.insert(pid, parent);
        }
    }
    parents
}

/// Whether the namespace `pid` is in has `vcap` mounted on `/var/vcap`: the namespace is
/// this VM's and not a later one that got the same inode number.
fn has_vcap_mounted(pid: u32, vcap: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return false;
    };
    // The mount's root is the bind source relative to its file system, so compare the end,
    // `/<vm cid>/vcap` (the CID is unique).
    let mut tail = PathBuf::new();
    let components: Vec<_> = vcap.components().collect();
    for component in &components[components.len().saturating_sub(2)..] {
        tail.push(component);
    }
    let tail = format!("/{}", tail.to_string_lossy());
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        // A bind source removed since shows as `<path>//deleted`.
        fields.len() > 4 && fields[4] == VCAP_MOUNT && {
            let root = unescape(fields[3]);
            root.strip_suffix("//deleted")
                .unwrap_or(&root)
                .ends_with(&tail)
        }
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(digits) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(value) = u8::from_str_radix(digits, 8)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a process was found to be a VM's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Membership {
    /// Its mount namespace has the VM's `vcap` on `/var/vcap`.
    Namespace,
    /// It descends from this member.
    ChildOf(u32),
}

/// Finds a VM's processes: those in a mount namespace (not the host's) that has the VM's
/// `vcap` on `/var/vcap`, and their descendants.
struct VmProcesses<'a> {
    vcap: &'a Path,
    host_namespaces: BTreeSet<u64>,
}

impl<'a> VmProcesses<'a> {
    fn new(vcap: &'a Path) -> Result<VmProcesses<'a>, String> {
        let mut host_namespaces = BTreeSet::from([own_mount_namespace()?]);
        host_namespaces.extend(mount_namespace(1));
        Ok(VmProcesses {
            vcap,
            host_namespaces,
        })
    }

    /// The VM's processes now. Namespaces are judged afresh on every scan: once a VM's
    /// namespace is gone its inode number goes to the next namespace made, often another
    /// VM's starting at that moment.
    fn scan(&self) -> BTreeMap<u32, Membership> {
        let parents = processes();
        let me = std::process::id();
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        let mut members = BTreeMap::new();
        for pid in parents
            .keys()
            .copied()
            .filter(|pid| *pid != me && *pid != 1)
        {
            let Some(namespace) = mount_namespace(pid) else {
                continue;
            };
            if self.host_namespaces.contains(&namespace) {
                continue;
            }
            let is_vms = *verdicts
                .entry(namespace)
                .or_insert_with(|| has_vcap_mounted(pid, self.vcap));
            if is_vms {
                members.insert(pid, Membership::Namespace);
            }
        }
        loop {
            let before = members.len();
            for (pid, parent) in &parents {
                if *pid != me
                    && *pid != 1
                    && !members.contains_key(pid)
                    && members.contains_key(parent)
                {
                    members.insert(*pid, Membership::ChildOf(*parent));
                }
            }
            if members.len() == before {
                return members;
            }
        }
    }

    /// Whether `pid` is still what the scan found, checked right before it is signalled.
    fn still_member(&self, pid: u32, membership: Membership) -> bool {
        match membership {
            Membership::Namespace => {
                mount_namespace(pid).is_some_and(|ns| !self.host_namespaces.contains(&ns))
                    && has_vcap_mounted(pid, self.vcap)
            }
            Membership::ChildOf(parent) => fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat))
                .is_some_and(|(state, actual)| state != 'Z' && actual == parent),
        }
    }
}

/// Stops every process of the VM whose directory is `vcap`: TERM, a grace period, then
/// KILL, until none is left.
pub fn stop_vm_processes(vcap: &Path) -> Result<(), String> {
    let finder = VmProcesses::new(vcap)?;
    let mut signalled = BTreeSet::new();
    let term_deadline = Instant::now() + STOP_GRACE;
    loop {
        let members = finder.scan();
        if members.is_empty() {
            return Ok(());
        }
        if Instant::now() >= term_deadline {
            break;
        }
        for (pid, membership) in &members {
            if !signalled.contains(pid) && finder.still_member(*pid, *membership) {
                signalled.insert(*pid);
                signal(*pid, Signal::TERM)?;
            }
        }
        std::thread::sleep(POLL);
    }
    let kill_deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let members = finder.scan();
        if members.is_empty() {
            return Ok(());
        }
        if Instant::now() >= kill_deadline {
            let pids: Vec<String> = members.keys().map(u32::to_string).collect();
            return Err(format!(
                "processes {} are still running after SIGKILL",
                pids.join(", ")
            ));
        }
        for (pid, membership) in &members {
            if finder.still_member(*pid, *membership) {
                signal(*pid, Signal::KILL)?;
            }
        }
        std::thread::sleep(POLL);
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    match kill_process(target, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(error) => Err(format!("cannot signal process {pid} ({signal:?}): {error}")),
    }
}

/// Whether anything is mounted at or below `dir` in this process's namespace (a directory
/// that must not be removed recursively).
pub fn has_mounts_below(dir: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|point| Path::new(&unescape(point)).starts_with(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_names() {
        assert_eq!(
            stat_fields("42 (a) b) S 7 42 42 0 -1"),
            Some(('S', 7)),
            "the name may hold ') '"
        );
        assert_eq!(stat_fields("9 (sleep) Z 1 9"), Some(('Z', 1)));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn hiding_covers_the_outermost_directories_and_keeps_those_below() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let disks = data.join("cpi/disks");
        fs::create_dir_all(&disks).unwrap();
        let data = fs::canonicalize(&data).unwrap();
        let disks = fs::canonicalize(&disks).unwrap();
        let hiding = Hiding::new(
            &[data.join("cpi"), data.clone(), dir.path().join("missing")],
            std::slice::from_ref(&disks),
        )
        .unwrap();
        assert_eq!(
            hiding,
            Hiding {
                covered: vec![data.clone()],
                kept: vec![disks.clone()],
            }
        );
        let (commands, paths) = hiding.commands(2);
        assert_eq!(paths, [disks.as_path(), data.as_path()]);
        assert_eq!(
            commands,
            " && exec 3<\"${2}\" \
             && mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec hidden-by-cpi \"${3}\" \
             && mkdir -p \"${2}\" && mount --no-canonicalize --bind /proc/self/fd/3 \"${2}\" \
             && exec 3<&- && mount -o remount,bind,ro \"${3}\""
        );
        // Nothing to keep outside what is covered; nothing at all when nothing exists.
        let outside = Hiding::new(&[data.join("cpi/vms")], std::slice::from_ref(&disks)).unwrap();
        assert_eq!(outside, Hiding::default());
        assert_eq!(Hiding::default().commands(2), (String::new(), Vec::new()));

        let error = Hiding::new(&[PathBuf::from("/var")], &[]).unwrap_err();
        assert_eq!(
            error,
            "cannot hide /var from local vms: their /var/vcap is below it"
        );
    }

    #[test]
    fn a_vm_without_processes_stops_at_once() {
        let started = Instant::now();
        stop_vm_processes(Path::new("/nonexistent/vm-none/vcap")).unwrap();
        assert!(started.elapsed() < STOP_GRACE);
    }
}
