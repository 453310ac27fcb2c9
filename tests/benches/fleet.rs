//! Benchmark (not a test): the director at fleet size, with simulated agents (`fleet`, in
//! this crate's binaries: one process serving every agent over the bus, and an external CPI
//! whose VMs are files).
//!
//! For each size (`FLEET_SIZES`, default `200,2000`; `10000` is the aim and takes a
//! while to set up), a fresh director (embedded bus, health monitor on, agents heartbeating
//! every 30 s) deploys a release without packages to that many instances, then:
//! - deploys the same manifest again, twice: the no-op deploy time (aim: 2,000 instances
//!   under 2 s, 10,000 under 5 s), and how it grows from one size to the next;
//! - stays idle `IDLE_SECONDS` (default 60) while every agent heartbeats: the director
//!   process's CPU use over that window (health monitor and embedded broker together; aim:
//!   under 10 % of one core at 10,000 agents) and its memory.
//!
//! Run with `cargo bench --profile dev -p tests --bench fleet` after `cargo build
//! --workspace --bins`, or in release with `cargo bench -p tests --bench fleet` after `cargo
//! build --release --workspace --bins` (it drives the `director` and `fleet` binaries built
//! beside it, and packs that build's `bosh-agent` into the stemcell it uploads).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::User;
use tests::hello::{deploy, stemcell};

/// A release with one job and no packages: the fleet compiles nothing.
fn write_release(dir: &Path) {
    let job = dir.join("jobs/noop");
    std::fs::create_dir_all(job.join("templates")).unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("packages")).unwrap();
    std::fs::write(
        dir.join("config/final.yml"),
        "name: fleet\nblobstore:\n  provider: local\n  options:\n    blobstore_path: .blobstore\n",
    )
    .unwrap();
    std::fs::write(
        job.join("spec"),
        "---\nname: noop\ntemplates:\n  bpm.yml.tera: config/bpm.yml\npackages: []\nproperties: {}\n",
    )
    .unwrap();
    std::fs::write(job.join("monit"), "").unwrap();
    std::fs::write(
        job.join("templates/bpm.yml.tera"),
        "processes:\n- name: noop\n  executable: /bin/sleep\n  args: [infinity]\n",
    )
    .unwrap();
    tests::commit_all(dir);
}

fn write_manifest(path: &Path, release: &Path, instances: usize) {
    std::fs::write(
        path,
        format!(
            "name: fleet
releases:
- {{name: fleet, version: create, url: 'file://{release}'}}
stemcells:
- {{alias: default, os: debian-bookworm, version: latest}}
update: {{canaries: 1, max_in_flight: 100%, canary_watch_time: 0-30000, update_watch_time: 0-30000}}
instance_groups:
- name: fleet
  azs: [z1]
  instances: {instances}
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - {{name: noop, release: fleet}}
",
            release = release.display()
        ),
    )
    .unwrap();
}

fn cloud_config(user: &User) {
    let path = user.home.path().join("cloud.yml");
    std::fs::write(
        &path,
        "azs: [{name: z1}]
vm_types: [{name: default}]
networks:
- name: default
  type: manual
  subnets:
  - {range: 10.200.0.0/16, gateway: 10.200.0.1, azs: [z1], reserved: [10.200.0.2-10.200.0.9]}
compilation: {workers: 1, az: z1, vm_type: default, network: default}
",
    )
    .unwrap();
    let out = user.run(&["update-cloud-config", path.to_str().unwrap(), "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// utime + stime of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

struct Measured {
    size: usize,
    first: Duration,
    no_op: Duration,
    cpu_percent: f64,
    rss_mib: u64,
}

fn timed_deploy(user: &User, manifest: &Path) -> Duration {
    let started = Instant::now();
    let (code, _, stderr) = deploy(user, manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    started.elapsed()
}

fn measure(size: usize, idle: Duration) -> Measured {
    let fleet_dir = tempfile::tempdir().unwrap();
    let fleet = tests::target_dir().join("fleet");
    assert!(
        fleet.is_file(),
        "{} is missing: run cargo build --workspace --bins first",
        fleet.display()
    );
    let user = User::with_director_config(&format!(
        "cpi: {{type: external, command: {fleet}, args: [cpi, {dir}]}}\nbus_limits: {{max_connections: {max}}}\nagent: {{heartbeat_interval: 30}}",
        fleet = fleet.display(),
        dir = fleet_dir.path().display(),
        max = size + 100
    ));
    let mut agents: Child = Command::new(&fleet)
        .args(["agents", fleet_dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    cloud_config(&user);
    let tarball = stemcell(&user, "1", None);
    let out = user.run(&["upload-stemcell", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let release: PathBuf = user.home.path().join("fleet-release");
    write_release(&release);
    let manifest = user.home.path().join("fleet.yml");
    write_manifest(&manifest, &release, size);

    let first = timed_deploy(&user, &manifest);
    let no_op = (0..2)
        .map(|_| timed_deploy(&user, &manifest))
        .min()
        .unwrap();

    let pid = user.director_pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(idle);
    let ticks = cpu_ticks(pid) - before;
    let cpu_percent = ticks as f64 / idle.as_secs_f64();
    let rss = rss_mib(pid);
    let _ = agents.kill();
    let _ = agents.wait();
    Measured {
        size,
        first,
        no_op,
        cpu_percent,
        rss_mib: rss,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "200,2000".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut results: Vec<Measured> = Vec::new();
    for size in sizes {
        let measured = measure(size, idle);
        println!(
            "{:>6} instances: first deploy {:>7.1} s, no-op deploy {:>6.2} s, director CPU idle with heartbeats {:>5.1} % of a core over {} s, RSS {} MiB",
            measured.size,
            measured.first.as_secs_f64(),
            measured.no_op.as_secs_f64(),
            measured.cpu_percent,
            idle.as_secs(),
            measured.rss_mib
        );
        results.push(measured);
    }
    for pair in results.windows(2) {
        let (small, big) = (&pair[0], &pair[1]);
        let size_ratio = big.size as f64 / small.size as f64;
        let time_ratio = big.no_op.as_secs_f64() / small.no_op.as_secs_f64();
        println!(
            "no-op deploy from {} to {} instances: {:.1}x the time for {:.1}x the instances ({})",
            small.size,
            big.size,
            time_ratio,
            size_ratio,
            if time_ratio <= size_ratio * 1.1 {
                "linear or better"
            } else {
                "worse than linear"
            }
        );
    }
}
