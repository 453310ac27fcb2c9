//! The real build: `build-stemcell` runs debootstrap from the host's Debian mirror, installs
//! the recipe's packages and a stand-in agent, and writes both stemcells; the engine's
//! reader accepts them; the image, unpacked, has the layout a job host needs and compiles
//! and runs a C program in a chroot.
//!
//! Needs root, network to a Debian mirror and about five minutes, so it is ignored by
//! default (CI stays under its time budget):
//! `cargo test -p stemcells --test build -- --ignored --nocapture`.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use director_core::archive::Limits;
use director_core::stemcell::{StemcellVersion, read_stemcell};
use flate2::read::GzDecoder;

/// (path, mode, is a directory) of every entry of a gzipped tar, in order.
fn image_entries(image: &Path) -> Vec<(String, u32, bool)> {
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(image).unwrap()));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            (
                entry.path().unwrap().display().to_string(),
                header.mode().unwrap(),
                header.entry_type().is_dir(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root, network to a Debian mirror and ~5 minutes: run with --ignored"]
fn builds_debian_bookworm_stemcells() {
    let root_uid = fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        root_uid, 0,
        "this test runs the real build, which needs root: run it as root (sudo -E cargo test \
         -p stemcells --test build -- --ignored)"
    );
    // Below /var/tmp: the root file system and the image need about 1.5 GB.
    fs::create_dir_all("/var/tmp").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("stemcell-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let agent = dir.path().join("bosh-agent");
    fs::write(&agent, "#!/bin/sh\necho stand-in agent\n").unwrap();
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
    let output = dir.path().join("out");

    let started = Instant::now();
    let result = Command::new(env!("CARGO_BIN_EXE_build-stemcell"))
        .arg("--agent")
        .arg(&agent)
        .arg("--output")
        .arg(&output)
        .arg("--work-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "build-stemcell failed:\n{stderr}");
    eprintln!("{stderr}");
    eprintln!("build took {:.0}s", elapsed.as_secs_f64());

    let stdout = String::from_utf8(result.stdout).unwrap();
    let tarballs: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(tarballs.len(), 2, "{stdout}");
    // Only the two tarballs in the output directory: no temporary file left.
    let mut names: Vec<String> = fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Nothing left of the work directory either.
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("build-stemcell-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut digests = Vec::new();
    for (tarball, (name, format)) in tarballs.iter().zip([
        ("bosh-docker-debian-bookworm", "docker-rootfs"),
        ("bosh-local-debian-bookworm", "local"),
    ]) {
        let size = fs::metadata(tarball).unwrap().len();
        let stemcell = read_stemcell(tarball, &Limits::default()).unwrap();
        let manifest = &stemcell.manifest;
        eprintln!(
            "{}: {size} bytes, image {} bytes\n{}",
            tarball.display(),
            stemcell.image_size(),
            manifest.to_yaml()
        );
        assert_eq!(manifest.name, name);
        assert_eq!(manifest.operating_system, "debian-bookworm");
        assert_eq!(manifest.stemcell_formats, [format]);
        assert_eq!(manifest.api_version, 3);
        assert_eq!(manifest.sha1, format!("sha256:{}", stemcell.image_sha256()));
        assert!(stemcell.warnings.is_empty(), "{}", stemcell.warnings);
        assert!(names.contains(&format!("{name}-{}.tgz", manifest.version)));
        // 12.<point>.<YYYYMMDD>, newer than the point release alone.
        let parts: Vec<&str> = manifest.version.split('.').collect();
        assert_eq!(parts.len(), 3, "{}", manifest.version);
        assert_eq!(parts[0], "12");
        assert_eq!(parts[2].len(), 8);
        let point = format!("{}.{}", parts[0], parts[1]);
        assert!(manifest.version() > StemcellVersion::parse(&point).unwrap());
        let mut packages = String::new();
        File::open(stemcell.packages_list().unwrap())
            .unwrap()
            .read_to_string(&mut packages)
            .unwrap();
        for package in ["build-essential", "curl", "iproute2", "rsync", "procps"] {
            assert!(
                packages
                    .lines()
                    .any(|l| l.starts_with(&format!("ii  {package} "))),
                "{package} is not installed:\n{packages}"
            );
        }
        let dev_tools = fs::read_to_string(stemcell.dir().join("dev_tools_file_list.txt")).unwrap();
        assert!(
            dev_tools.lines().any(|l| l == "/usr/bin/gcc"),
            "{dev_tools}"
        );
        digests.push(stemcell.image_sha256().to_string());

        if format == "local" {
            check_image(&stemcell.image(), dir.path());
        }
    }
    assert_eq!(digests[0], digests[1], "both formats carry the same image");
}

/// The image's layout, then a C program compiled and run inside it.
fn check_image(image: &Path, scratch: &Path) {
    let entries = image_entries(image);
    let paths: Vec<&Path> = entries
        .iter()
        .map(|(p, _, _)| Path::new(p.as_str()))
        .collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "entries are sorted by name, depth first"
    );
    let mode = |wanted: &str| {
        entries
            .iter()
            .find(|(p, _, _)| p == wanted)
            .map(|(_, mode, dir)| (*mode, *dir))
            .unwrap_or_else(|| panic!("{wanted} is not in the image"))
    };
    assert_eq!(mode("var/vcap/bosh/bin/bosh-agent"), (0o755, false));
    assert_eq!(mode("var/vcap/bosh/agent.json"), (0o644, false));
    for directory in [
        "var/vcap/bosh",
        "var/vcap/data",
        "var/vcap/store",
        "var/vcap/sys/log",
        "var/vcap/sys/run",
        "var/vcap/jobs",
        "var/vcap/packages",
        "home/vcap",
    ] {
        assert!(mode(directory).1, "{directory} is a directory");
    }
    assert_eq!(mode("tmp"), (0o1777, true));
    assert_eq!(mode("usr/bin/passwd").0 & 0o4000, 0o4000, "setuid kept");
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("var/lib/apt/lists") && *p != Path::new("var/lib/apt/lists")),
        "APT lists are cleaned"
    );
    assert!(
        !paths
            .iter()
            .any(|p| *p == Path::new("usr/sbin/policy-rc.d")),
        "the build's policy-rc.d is gone"
    );

    let unpacked = scratch.join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(File::open(image).unwrap()));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.unpack(&unpacked).unwrap();
    let passwd = fs::read_to_string(unpacked.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("vcap:x:1000:1000:")),
        "{passwd}"
    );
    assert_eq!(
        fs::read_to_string(unpacked.join("etc/resolv.conf")).unwrap(),
        "",
        "no resolver of the build host"
    );
    let compiled = Command::new("chroot")
        .arg(&unpacked)
        .args([
            "/bin/sh",
            "-euc",
            "printf '#include <stdio.h>\\nint main(void) { puts(\"compiled\"); return 0; }\\n' \
             > /tmp/t.c && gcc -O2 -o /tmp/t /tmp/t.c && /tmp/t && make --version | head -n 1 \
             && /var/vcap/bosh/bin/bosh-agent",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&compiled.stdout);
    assert!(
        compiled.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    assert!(
        out.contains("compiled\nGNU Make 4.3\nstand-in agent\n"),
        "{out}"
    );
}
