//! Helpers for the CPI tests: tiny `local` stemcell images holding a fake agent, the
//! director's arguments, and looking at processes through `/proc`.

#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

/// A fake agent: records what it sees at the absolute `/var/vcap`, starts a background
/// child, and sleeps.
pub const FAKE_AGENT: &str = r#"#!/bin/sh
log=/var/vcap/sys/log/fake.log
{
  echo "argv: $*"
  echo "--- ls"
  ls /var/vcap
  echo "--- settings"
  cat /var/vcap/bosh/settings.json
  echo "--- end"
} > "$log.tmp"
echo "fake agent started" >&2
sleep 1000 &
echo $! > /var/vcap/sys/run/child.pid
echo $$ > /var/vcap/sys/run/agent.pid
mv "$log.tmp" "$log"
sleep 1000
"#;

/// An agent that fails at once.
pub const BROKEN_AGENT: &str = "#!/bin/sh\necho 'broken agent: no settings for you' >&2\nexit 3\n";

/// What the fake agent recorded.
#[derive(Debug)]
pub struct FakeLog {
    pub argv: String,
    pub ls: Vec<String>,
    pub settings: Value,
}

/// A gzipped tar with `files` (path, mode, content), in order, under their paths as given.
pub fn tgz(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, mode, content) in files {
        let mut header = tar::Header::new_gnu();
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(content.len() as u64);
        }
        header.set_mode(*mode);
        // Written by hand: `set_path` refuses `..`, and hostile images are what we test.
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    let gzip = builder.into_inner().unwrap();
    gzip.finish().unwrap()
}

/// A `local` stemcell image whose agent is `agent`, with a bit of rootfs around it.
pub fn stemcell_image(dir: &Path, name: &str, agent: &str) -> PathBuf {
    let bytes = tgz(&[
        ("./", 0o755, b""),
        ("./etc/", 0o755, b""),
        ("./etc/hostname", 0o644, b"stemcell\n"),
        ("./var/", 0o755, b""),
        ("./var/vcap/", 0o755, b""),
        ("./var/vcap/bosh/", 0o755, b""),
        (
            "./var/vcap/bosh/agent.json",
            0o644,
            br#"{"Infrastructure":{}}"#,
        ),
        ("./var/vcap/bosh/bin/", 0o755, b""),
        ("./var/vcap/bosh/bin/bosh-agent", 0o755, agent.as_bytes()),
    ]);
    let path = dir.join(name);
    fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
    path
}

/// The `environment` the director passes to `create_vm`.
pub fn environment(agent_id: &str) -> Value {
    json!({
        "bosh": {
            "mbus": {"urls": [format!("nats://{agent_id}:secret@127.0.0.1:4222")]},
            "blobstores": [{"provider": "director", "options": {"endpoint": "http://127.0.0.1:25555"}}],
            "group": "dep-web",
            "groups": ["dep", "web", "dep-web"],
        },
    })
}

/// The `networks` the director passes to `create_vm`, with a loopback address.
pub fn networks(ip: &str) -> Value {
    json!({
        "default": {
            "type": "manual",
            "ip": ip,
            "netmask": "255.255.255.0",
            "gateway": "127.0.45.1",
            "dns": [],
            "default": ["dns", "gateway"],
            "cloud_properties": {},
        },
    })
}

/// Waits for a file to exist (up to 20 seconds).
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads what the fake agent of the VM in `vm_dir` recorded, once it has.
pub fn fake_log(vm_dir: &Path) -> FakeLog {
    let path = vm_dir.join("vcap/sys/log/fake.log");
    wait_for(&path);
    let text = fs::read_to_string(&path).unwrap();
    let argv = text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("argv: ")
        .to_string();
    let ls = section(&text, "--- ls", "--- settings")
        .lines()
        .map(str::to_string)
        .collect();
    let settings = serde_json::from_str(section(&text, "--- settings", "--- end")).unwrap();
    FakeLog { argv, ls, settings }
}

fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap() + start.len();
    let to = text.find(end).unwrap();
    text[from..to].trim()
}

/// A pid the fake agent wrote into `vcap/sys/run/<name>`.
pub fn recorded_pid(vm_dir: &Path, name: &str) -> u32 {
    let path = vm_dir.join("vcap/sys/run").join(name);
    wait_for(&path);
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Whether a process runs (a zombie, dead but not yet reaped by its parent, does not).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = &stat[stat.rfind(')').unwrap() + 1..];
            after_name.split_whitespace().next() != Some("Z")
        }
        Err(_) => false,
    }
}

/// The inode of a process's mount namespace.
pub fn mount_namespace(pid: u32) -> u64 {
    let link = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let text = link.to_str().unwrap();
    text.trim_start_matches("mnt:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// A VM's `vm.json`.
pub fn vm_record(vm_dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(vm_dir.join("vm.json")).unwrap()).unwrap()
}

/// Deletes every VM under a local CPI's root when dropped, so that a failing test leaves
/// no agent running.
pub struct DeleteVmsOnDrop(pub std::path::PathBuf);

impl Drop for DeleteVmsOnDrop {
    fn drop(&mut self) {
        use cpi::Cpi as _;
        let cpi = cpi::LocalCpi::new(self.0.clone());
        for vm in names(&self.0.join("vms")) {
            let _ = cpi.delete_vm(&vm);
        }
    }
}

/// The names in a directory, sorted (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}
