//! Benchmark (not a test): the director's memory while agents download a 1 GiB blob several
//! times at once. A dev director stores a stemcell whose image is 1 GiB of random bytes;
//! `DOWNLOADS` (default 4) `curl`s then fetch that blob through one signed link at the same
//! time (what agents do with packages and images), while a thread samples the director's
//! resident memory. It prints the director's peak RSS (`VmHWM`) after the upload, its RSS
//! before the downloads, and its peak RSS during them (the peak is reset between, through
//! `/proc/<pid>/clear_refs`). Streamed blobs keep the peak within tens of MiB of the
//! baseline; a director that loads each blob into memory needs a GiB or more per download.
//!
//! Run with `cargo bench -p director --bench blob_download` (or `--profile dev` for a quick
//! run). `DIRECTOR_BIN=/path/to/director` measures another build of the director (an older
//! commit) with the same setup; `DOWNLOADS=n` changes the concurrency.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const IMAGE_BYTES: usize = 1 << 30;

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_random(path: &Path, bytes: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes / block.len() {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let downloads: usize = std::env::var("DOWNLOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let director =
        std::env::var("DIRECTOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_director").into());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    write_random(&dir.join("image"), IMAGE_BYTES);
    let digest = run(Command::new("sha256sum").arg("image").current_dir(dir));
    let digest = digest.split_whitespace().next().unwrap().to_string();
    std::fs::write(
        dir.join("stemcell.MF"),
        format!("name: bosh-local-debian-bookworm\nversion: '12.8.1'\napi_version: 3\noperating_system: debian-bookworm\nsha1: sha256:{digest}\nstemcell_formats: [local]\ncloud_properties: {{}}\n"),
    )
    .unwrap();
    // Random bytes do not compress: the fastest gzip level is enough.
    run(Command::new("tar")
        .args([
            "-I",
            "gzip -1",
            "-cf",
            "stemcell.tgz",
            "stemcell.MF",
            "image",
        ])
        .current_dir(dir));
    std::fs::remove_file(dir.join("image")).unwrap();
    let tarball = dir.join("stemcell.tgz");

    let with_user = |command: &mut Command| {
        command
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("NO_COLOR", "1");
    };
    let mut upload = Command::new(&director);
    with_user(upload.args(["upload-stemcell", tarball.to_str().unwrap()]));
    run(&mut upload);
    std::fs::remove_file(&tarball).unwrap();

    let record = std::fs::read_to_string(dir.join("data/director/dev.yml")).unwrap();
    let field = |name: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .trim()
            .trim_matches('\'')
            .to_string()
    };
    let (url, token) = (field("url"), field("token"));
    let pid: u32 = field("pid").parse().unwrap();
    let link = run(Command::new("curl").args([
        "-sSf",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{url}/blobs/{digest}/link"),
    ]));
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    let path = link["path"].as_str().unwrap().to_string();

    let after_upload = status_kib(pid, "VmHWM");
    // Start the peak afresh: what follows is the downloads' alone.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let before = status_kib(pid, "VmRSS");
    let done = Arc::new(AtomicBool::new(false));
    let sampled_peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (done, sampled_peak) = (done.clone(), sampled_peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                sampled_peak.fetch_max(status_kib(pid, "VmRSS"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let curls: Vec<_> = (0..downloads)
        .map(|_| {
            Command::new("curl")
                .args(["-sSf", "-o", "/dev/null", "-w", "%{size_download}"])
                .arg(format!("{url}{path}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let sizes: Vec<String> = curls
        .into_iter()
        .map(|curl| {
            let output = curl.wait_with_output().unwrap();
            assert!(output.status.success(), "a download failed");
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .collect();
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = if reset {
        status_kib(pid, "VmHWM").max(sampled_peak.load(Ordering::SeqCst))
    } else {
        sampled_peak.load(Ordering::SeqCst)
    };

    let mut stop = Command::new(&director);
    with_user(stop.arg("stop-server"));
    let _ = stop.output();

    for size in &sizes {
        assert_eq!(size.trim(), IMAGE_BYTES.to_string(), "a download was short");
    }
    println!("director: {director}");
    println!(
        "{downloads} concurrent downloads of a {} MiB blob in {:.1} s",
        IMAGE_BYTES >> 20,
        elapsed.as_secs_f64()
    );
    println!(
        "director peak RSS after the upload:  {:>8.1} MiB",
        mib(after_upload)
    );
    println!(
        "director RSS before the downloads:   {:>8.1} MiB",
        mib(before)
    );
    println!(
        "director peak RSS during downloads:  {:>8.1} MiB ({}; +{:.1} MiB)",
        mib(peak),
        if reset {
            "VmHWM reset before"
        } else {
            "sampled every 20 ms"
        },
        mib(peak.saturating_sub(before))
    );
}
