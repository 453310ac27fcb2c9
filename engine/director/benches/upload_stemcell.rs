//! Benchmark (not a test): `director upload-stemcell` of a stemcell whose image is 1 GiB,
//! through a dev director on this machine, timed against `sha256sum` + `cp` of the same
//! tarball in the same run. Target: at most 1.5x. Run with
//! `cargo bench -p director --bench upload_stemcell`; it prints both times and the ratio.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE_BYTES: usize = 1 << 30;

fn run(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
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

fn main() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // A stemcell as the builder makes them: image + stemcell.MF in a gzipped tarball (real
    // images are compressed already, so random bytes stand for them).
    write_random(&dir.join("image"), IMAGE_BYTES);
    let digest = String::from_utf8(
        Command::new("sha256sum")
            .arg("image")
            .current_dir(dir)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let digest = digest.split_whitespace().next().unwrap().to_string();
    std::fs::write(
        dir.join("stemcell.MF"),
        format!("name: bosh-local-debian-bookworm\nversion: '12.8.1'\napi_version: 3\noperating_system: debian-bookworm\nsha1: sha256:{digest}\nstemcell_formats: [local]\ncloud_properties: {{}}\n"),
    )
    .unwrap();
    run(Command::new("tar")
        .args(["-czf", "stemcell.tgz", "stemcell.MF", "image"])
        .current_dir(dir));
    std::fs::remove_file(dir.join("image")).unwrap();
    let tarball = dir.join("stemcell.tgz");
    let size = std::fs::metadata(&tarball).unwrap().len();

    let director = env!("CARGO_BIN_EXE_director");
    let with_user = |command: &mut Command| {
        command
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("NO_COLOR", "1");
    };
    let mut status = Command::new(director);
    with_user(status.arg("status"));
    run(&mut status);

    // Baseline: hash the tarball and copy it, as a careful operator would by hand.
    let baseline_started = Instant::now();
    run(Command::new("sha256sum").arg(&tarball));
    run(Command::new("cp").arg(&tarball).arg(dir.join("copy.tgz")));
    let baseline = baseline_started.elapsed();
    std::fs::remove_file(dir.join("copy.tgz")).unwrap();

    // The embedded default: the dev director reads the tarball where it is.
    let mut upload = Command::new(director);
    with_user(upload.args(["upload-stemcell", tarball.to_str().unwrap()]));
    let ours = run(&mut upload);

    // A remote director: the same bytes streamed over HTTP (forced with --director).
    let mut delete = Command::new(director);
    with_user(delete.args(["delete-stemcell", "bosh-local-debian-bookworm/12.8.1"]));
    run(&mut delete);
    let record = std::fs::read_to_string(dir.join("data/director/dev.yml")).unwrap();
    let field = |name: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .trim()
            .to_string()
    };
    let mut streamed = Command::new(director);
    with_user(
        streamed
            .args([
                "--director",
                &field("url"),
                "upload-stemcell",
                tarball.to_str().unwrap(),
            ])
            .env("DIRECTOR_TOKEN", field("token")),
    );
    let streamed = run(&mut streamed);

    let mut stop = Command::new(director);
    with_user(stop.arg("stop-server"));
    let _ = stop.output();

    let mib = size as f64 / (1024.0 * 1024.0);
    let ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    println!("stemcell tarball: {mib:.0} MiB");
    println!(
        "sha256sum + cp:          {:>6.2} s ({:>6.0} MiB/s)",
        baseline.as_secs_f64(),
        mib / baseline.as_secs_f64()
    );
    println!(
        "director upload-stemcell:{:>6.2} s ({:>6.0} MiB/s)",
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    println!(
        "director upload-stemcell, streamed over HTTP:{:>6.2} s ({:>6.0} MiB/s), ratio {:.2}x",
        streamed.as_secs_f64(),
        mib / streamed.as_secs_f64(),
        streamed.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "ratio (embedded default): {ratio:.2}x (target <= 1.5x) {}",
        if ratio <= 1.5 { "OK" } else { "OVER TARGET" }
    );
}
