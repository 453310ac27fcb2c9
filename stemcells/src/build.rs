//! The build: debootstrap, packages, configuration, agent, image, stemcell tarballs. This is
//! the effectful edge of the crate; it needs root (debootstrap, chroot, mount) and the
//! network to a Debian mirror.
//!
//! 1. check the agent binary, the `--version` override and root;
//! 2. pick the mirrors (`--mirror`, `--security-mirror`, else the host's APT sources);
//! 3. install debootstrap and Debian's keyring with apt-get when missing;
//! 4. `debootstrap --variant=minbase` into a fresh work directory below `/var/tmp`;
//! 5. inside the root (`/proc` mounted, services kept from starting): APT sources for the
//!    suite, `-updates` and `-security`, `apt-get dist-upgrade` (the security fixes), the
//!    recipe's packages; then `packages.txt` (`dpkg -l`) and `dev_tools_file_list.txt`;
//! 6. the recipe's post-install script, the agent and its `agent.json`;
//! 7. the version (`/etc/debian_version` and the date, or `--version`), the image (a
//!    gzipped tar of the root, sorted), and one stemcell tarball per format, each written
//!    to a temporary file in the output directory and renamed into place.
//!
//! Files are written into the root only through real directories (never through a symlink
//! of the image, which would resolve on the host), and the work directory is removed only
//! when nothing is mounted below it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use director_core::archive::{TgzEntry, TgzSource, write_tgz};
use director_core::stemcell::{StemcellManifest, StemcellVersion};

use crate::image::write_image;
use crate::manifest::{Built, Format, stemcell_manifest, tarball_name};
use crate::recipe::{self, Recipe};
use crate::sources;
use crate::version::{Date, point_release, stemcell_version};

/// Where the host keeps Debian's archive keyring (package `debian-archive-keyring`).
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The PATH of commands run inside the root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The agent binary to install as `/var/vcap/bosh/bin/bosh-agent`.
    pub agent: PathBuf,
    /// Where the stemcell tarballs go.
    pub output: PathBuf,
    /// Which stemcells to write (one tarball each).
    pub formats: Vec<Format>,
    /// The Debian archive; `None` takes the host's.
    pub mirror: Option<String>,
    /// The Debian security archive; `None` takes the host's, if it has one.
    pub security_mirror: Option<String>,
    /// The stemcell version; `None` makes it from the point release and the date.
    pub version: Option<String>,
    /// Where the work directory is made (default `/var/tmp`).
    pub work_parent: Option<PathBuf>,
    /// Keep the work directory (root file system, image) after the build.
    pub keep_work_dir: bool,
    /// Where finished root file systems (debootstrap, packages and post-install, before
    /// the agent) are kept by recipe and mirrors, so that a rebuild with another agent or
    /// version skips the Debian part. For development and tests: a release build leaves it
    /// out to get today's security fixes.
    pub base_cache: Option<PathBuf>,
    /// Stop once the root file system is in `base_cache` (no agent, no stemcells): fills
    /// the cache ahead of the builds that use it.
    pub base_only: bool,
}

/// A stemcell tarball that was written.
#[derive(Clone, Debug)]
pub struct Output {
    /// Its format.
    pub format: Format,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its `stemcell.MF`.
    pub manifest: StemcellManifest,
}

/// What a build made, and how long each step took.
#[derive(Clone, Debug)]
pub struct BuildReport {
    /// The stemcell version.
    pub version: String,
    /// Size of `image` in bytes.
    pub image_size: u64,
    /// Entries of `image`.
    pub image_entries: u64,
    /// Paths left out of the image (devices, fifos, sockets).
    pub image_skipped: Vec<String>,
    /// The tarballs, one per format.
    pub outputs: Vec<Output>,
    /// Each step with its duration.
    pub steps: Vec<(&'static str, Duration)>,
    /// The work directory, when it was kept.
    pub kept_work_dir: Option<PathBuf>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `--agent` names nothing.
    #[error(
        "agent binary {0} does not exist; build the agent (the `agent` crate) and pass its \
         binary with --agent"
    )]
    AgentMissing(String),
    /// `--base-only` without `--base-cache`.
    #[error("--base-only keeps the root file system in --base-cache: name that directory")]
    BaseOnlyWithoutCache,
    /// `--agent` names a directory or such.
    #[error("agent binary {0} is not a regular file")]
    AgentNotAFile(String),
    /// Not root.
    #[error("build-stemcell must run as root: debootstrap, chroot and mount need it (try sudo)")]
    NotRoot,
    /// No Debian archive in the host's APT sources and no `--mirror`.
    #[error(
        "no Debian mirror in {searched} (a `deb` source with a Debian suite and the main \
         component); pass --mirror URL"
    )]
    NoMirror {
        /// The files read.
        searched: String,
    },
    /// `--version` is not a stemcell version.
    #[error("--version: '{0}' is not a stemcell version (e.g. 12.8.20261126)")]
    BadVersion(String),
    /// `/etc/debian_version` is not a point release.
    #[error(
        "{path}: '{text}' is not a Debian point release (e.g. 12.8); pass --version to name \
         the stemcell's version"
    )]
    BadDebianVersion {
        /// The file.
        path: String,
        /// What it says.
        text: String,
    },
    /// A command failed.
    #[error("{what} failed ({status}): {command}{output}")]
    Command {
        /// What it was for.
        what: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, when it was captured (with a leading newline).
        output: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Anything else, already worded.
    #[error("{0}")]
    Other(String),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.display().to_string();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// Builds the stemcells; `log` receives one line per step (for stderr).
pub fn build(options: &BuildOptions, log: &dyn Fn(&str)) -> Result<BuildReport, BuildError> {
    let recipe = recipe::debian_bookworm();
    if options.base_only && options.base_cache.is_none() {
        return Err(BuildError::BaseOnlyWithoutCache);
    }
    if !options.base_only {
        check_agent(&options.agent)?;
    }
    if let Some(version) = &options.version {
        if StemcellVersion::parse(version).is_none() {
            return Err(BuildError::BadVersion(version.clone()));
        }
    }
    if !is_root()? {
        return Err(BuildError::NotRoot);
    }
    let (mirror, security) = mirrors(options)?;
    log(&format!("mirror: {mirror}"));
    match &security {
        Some(security) => log(&format!("security mirror: {security}")),
        None => log(
            "no Debian security mirror in the host's APT sources and no --security-mirror: \
             the stemcell gets security fixes only through point releases",
        ),
    }
    fs::create_dir_all(&options.output).map_err(io_error("create", &options.output))?;

    let mut steps = Vec::new();
    let mut timed = |name: &'static str, started: Instant| {
        let elapsed = started.elapsed();
        log(&format!("{name}: done in {:.1}s", elapsed.as_secs_f64()));
        steps.push((name, elapsed));
    };

    let started = Instant::now();
    let debootstrap = ensure_debootstrap(log)?;
    timed("host tools", started);

    let parent = options
        .work_parent
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let mut work = WorkDir::create(&parent, options.keep_work_dir)?;
    log(&format!("work directory: {}", work.path().display()));
    let root = work.path().join("rootfs");

    let cache = options
        .base_cache
        .as_ref()
        .map(|dir| BaseCache::new(dir, &recipe, &mirror, security.as_deref()));
    let started = Instant::now();
    let cached = match &cache {
        Some(cache) => cache.restore(&root, log)?,
        None => None,
    };
    let lists = match cached {
        Some(lists) => {
            timed("cached root", started);
            lists
        }
        None => {
            let lists = debian_root(
                &debootstrap,
                &root,
                &recipe,
                &mirror,
                &security,
                log,
                &mut timed,
            )?;
            if let Some(cache) = &cache {
                let started = Instant::now();
                cache.store(&root, &lists, log)?;
                timed("cache root", started);
            }
            lists
        }
    };
    if options.base_only {
        let kept_work_dir = work.finish()?;
        return Ok(BuildReport {
            version: String::new(),
            image_size: 0,
            image_entries: 0,
            image_skipped: Vec::new(),
            outputs: Vec::new(),
            steps,
            kept_work_dir,
        });
    }

    let started = Instant::now();
    write_in_root(
        &root,
        "var/vcap/bosh/bin/bosh-agent",
        Content::File(&options.agent),
        0o755,
    )?;
    write_in_root(
        &root,
        "var/vcap/bosh/agent.json",
        Content::Bytes(recipe.agent_config.as_bytes()),
        0o644,
    )?;
    let version = match &options.version {
        Some(version) => version.clone(),
        None => {
            let path = checked_path(&root, "etc/debian_version")?;
            let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
            let release = point_release(&text).ok_or_else(|| BuildError::BadDebianVersion {
                path: path.display().to_string(),
                text: text.trim().to_string(),
            })?;
            stemcell_version(release, build_date()?)
        }
    };
    log(&format!("version: {version}"));
    // As BOSH's stemcells say it; it also makes two versions two different images.
    write_in_root(
        &root,
        "var/vcap/bosh/etc/stemcell_version",
        Content::Bytes(format!("{version}\n").as_bytes()),
        0o644,
    )?;
    timed("configure", started);

    let started = Instant::now();
    let image_path = work.path().join("image");
    let file = File::create(&image_path).map_err(io_error("create", &image_path))?;
    let (writer, summary) = write_image(&root, BufWriter::with_capacity(1 << 20, file))
        .map_err(io_error("write the image of", &root))?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .map_err(io_error("write", &image_path))?;
    log(&format!(
        "image: {} entries, {} bytes, sha256:{}",
        summary.entries, summary.size, summary.sha256
    ));
    timed("image", started);

    let started = Instant::now();
    let built = Built {
        operating_system: recipe.operating_system.to_string(),
        version: version.clone(),
        image_sha256: summary.sha256.clone(),
        architecture: lists.architecture.clone(),
    };
    let mut outputs = Vec::new();
    for &format in &options.formats {
        let manifest = stemcell_manifest(format, &built);
        let path = write_stemcell(&options.output, &manifest, &image_path, &lists)?;
        let size = fs::metadata(&path).map_err(io_error("read", &path))?.len();
        log(&format!("wrote {} ({size} bytes)", path.display()));
        outputs.push(Output {
            format,
            path,
            size,
            manifest,
        });
    }
    timed("stemcells", started);

    let kept_work_dir = work.finish()?;
    Ok(BuildReport {
        version,
        image_size: summary.size,
        image_entries: summary.entries,
        image_skipped: summary.skipped,
        outputs,
        steps,
        kept_work_dir,
    })
}

/// Debootstrap, the recipe's packages and its post-install script, into `root`.
fn debian_root(
    debootstrap: &Path,
    root: &Path,
    recipe: &Recipe,
    mirror: &str,
    security: &Option<String>,
    log: &dyn Fn(&str),
    timed: &mut dyn FnMut(&'static str, Instant),
) -> Result<Lists, BuildError> {
    let started = Instant::now();
    log(&format!(
        "debootstrap {} from {mirror} (minbase)",
        recipe.suite
    ));
    run(
        Command::new(debootstrap)
            .args(["--variant=minbase", "--components=main"])
            .arg(format!("--keyring={DEBIAN_KEYRING}"))
            .arg(recipe.suite)
            .arg(root)
            .arg(mirror),
        "debootstrap",
    )?;
    timed("debootstrap", started);

    let started = Instant::now();
    let lists = install_packages(root, recipe, mirror, security.as_deref(), log)?;
    timed("packages", started);

    let started = Instant::now();
    log("post-install configuration");
    // As an argument rather than on stdin, so that no command of the script can read the
    // rest of it.
    let mut script = Command::new("chroot");
    chroot_env(
        script
            .arg(root)
            .args(["/bin/sh", "-euc", recipe.post_install, "post-install.sh"]),
    );
    run(&mut script, "post-install.sh")?;
    timed("post-install", started);
    Ok(lists)
}

/// Finished root file systems kept by what made them (`--base-cache`): `<dir>/<os>-<key>/`
/// holds `rootfs/` and the lists (`packages.txt`, `dev_tools_file_list.txt`,
/// `architecture`); an entry is made in a temporary directory and renamed into place, so
/// one that exists is whole.
struct BaseCache {
    entry: PathBuf,
}

impl BaseCache {
    fn new(dir: &Path, recipe: &Recipe, mirror: &str, security: Option<&str>) -> BaseCache {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [
            recipe.suite,
            recipe.post_install,
            mirror,
            security.unwrap_or(""),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        for package in recipe.packages.iter().chain(&recipe.dev_tools) {
            hash.update(package.as_bytes());
            hash.update([0]);
        }
        let key: String = hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        BaseCache {
            entry: dir.join(format!("{}-{key}", recipe.operating_system)),
        }
    }

    /// Copies the cached root into `root` (which must not exist); `None` when there is none.
    fn restore(&self, root: &Path, log: &dyn Fn(&str)) -> Result<Option<Lists>, BuildError> {
        let cached = self.entry.join("rootfs");
        if !cached.is_dir() {
            log(&format!(
                "no cached root file system at {}",
                self.entry.display()
            ));
            return Ok(None);
        }
        let read = |name: &str| {
            let path = self.entry.join(name);
            fs::read_to_string(&path).map_err(io_error("read", &path))
        };
        let lists = Lists {
            packages: read("packages.txt")?,
            dev_tools: read("dev_tools_file_list.txt")?,
            architecture: read("architecture")?.trim().to_string(),
        };
        let built = fs::metadata(&cached)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or_else(
                || "an unknown time".to_string(),
                |d| format!("{}s after the epoch", d.as_secs()),
            );
        log(&format!(
            "reusing the root file system cached at {} (built {built}); leave out --base-cache for today's packages",
            self.entry.display()
        ));
        copy_tree(&cached, root)?;
        Ok(Some(lists))
    }

    /// Keeps a copy of `root` and its lists.
    fn store(&self, root: &Path, lists: &Lists, log: &dyn Fn(&str)) -> Result<(), BuildError> {
        let parent = self.entry.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let staging = parent.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let made = (|| {
            fs::create_dir(&staging).map_err(io_error("create", &staging))?;
            copy_tree(root, &staging.join("rootfs"))?;
            for (name, text) in [
                ("packages.txt", lists.packages.as_str()),
                ("dev_tools_file_list.txt", lists.dev_tools.as_str()),
                ("architecture", lists.architecture.as_str()),
            ] {
                let path = staging.join(name);
                fs::write(&path, text).map_err(io_error("write", &path))?;
            }
            match fs::rename(&staging, &self.entry) {
                Ok(()) => Ok(()),
                // Another build stored the same root meanwhile.
                Err(error) if self.entry.is_dir() => {
                    let _ = error;
                    fs::remove_dir_all(&staging).map_err(io_error("remove", &staging))
                }
                Err(error) => Err(io_error("rename into place", &self.entry)(error)),
            }
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        made?;
        log(&format!(
            "cached the root file system at {}",
            self.entry.display()
        ));
        Ok(())
    }
}

/// `cp -a` (keeping owners, modes, links, device nodes and times), with reflinks where the
/// file system has them.
fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    run(
        Command::new("cp")
            .args(["-a", "--reflink=auto", "--no-target-directory"])
            .arg(from)
            .arg(to),
        "cp -a",
    )
}

fn check_agent(agent: &Path) -> Result<(), BuildError> {
    match fs::metadata(agent) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => Err(BuildError::AgentNotAFile(agent.display().to_string())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(BuildError::AgentMissing(agent.display().to_string()))
        }
        Err(error) => Err(io_error("read", agent)(error)),
    }
}

/// Whether this process runs as root: `/proc/self` belongs to the effective user.
fn is_root() -> Result<bool, BuildError> {
    let metadata = fs::metadata("/proc/self").map_err(io_error("read", Path::new("/proc/self")))?;
    Ok(metadata.uid() == 0)
}

/// The Debian archive and security archive: the flags, else the host's APT sources.
fn mirrors(options: &BuildOptions) -> Result<(String, Option<String>), BuildError> {
    let etc_apt = Path::new("/etc/apt");
    let host = if options.mirror.is_none() || options.security_mirror.is_none() {
        let found = sources::read_host_sources(etc_apt).map_err(io_error("read", etc_apt))?;
        sources::debian_mirrors(&found)
    } else {
        sources::DebianMirrors::default()
    };
    let mirror = match options.mirror.clone().or(host.archive) {
        Some(mirror) => mirror,
        None => {
            return Err(BuildError::NoMirror {
                searched: "/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and \
                           /etc/apt/sources.list.d/*.sources"
                    .to_string(),
            });
        }
    };
    Ok((mirror, options.security_mirror.clone().or(host.security)))
}

/// The path of `debootstrap`, installing it (and Debian's keyring) with apt-get when
/// missing.
fn ensure_debootstrap(log: &dyn Fn(&str)) -> Result<PathBuf, BuildError> {
    let keyring = Path::new(DEBIAN_KEYRING);
    if let (Some(debootstrap), true) = (find_program("debootstrap"), keyring.is_file()) {
        return Ok(debootstrap);
    }
    log("installing debootstrap and debian-archive-keyring with apt-get");
    let install = || {
        let mut command = Command::new("apt-get");
        command
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["debootstrap", "debian-archive-keyring"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command, "apt-get install debootstrap")
    };
    if install().is_err() {
        run(
            Command::new("apt-get").args(["update", "-q"]),
            "apt-get update",
        )?;
        install()?;
    }
    if !keyring.is_file() {
        return Err(BuildError::Other(format!(
            "{DEBIAN_KEYRING} is missing after installing debian-archive-keyring; refusing to \
             build without checking the mirror's signatures"
        )));
    }
    find_program("debootstrap").ok_or_else(|| {
        BuildError::Other("debootstrap is not on PATH after installing it".to_string())
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// What the package step leaves for the tarballs.
struct Lists {
    packages: String,
    dev_tools: String,
    architecture: String,
}

fn install_packages(
    root: &Path,
    recipe: &Recipe,
    mirror: &str,
    security: Option<&str>,
    log: &dyn Fn(&str),
) -> Result<Lists, BuildError> {
    // APT sources: the suite, its updates, its security fixes.
    let old_sources = checked_path(root, "etc/apt/sources.list")?;
    remove_if_present(&old_sources)?;
    write_in_root(
        root,
        "etc/apt/sources.list.d/debian.sources",
        Content::Bytes(sources::stemcell_sources(recipe.suite, mirror, security).as_bytes()),
        0o644,
    )?;
    // Name resolution for APT inside the root (emptied again by post-install.sh).
    let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    write_in_root(root, "etc/resolv.conf", Content::Bytes(&resolv), 0o644)?;
    // Packages must not start services in the build host's namespaces.
    write_in_root(
        root,
        "usr/sbin/policy-rc.d",
        Content::Bytes(b"#!/bin/sh\n# Written by build-stemcell for the build only.\nexit 101\n"),
        0o755,
    )?;

    let lists = {
        let _proc = Mount::proc(root)?;
        let apt = |args: &[&str], what: &str| {
            let mut command = Command::new("chroot");
            chroot_env(command.arg(root).arg("apt-get").args(["-y", "-q"]).args([
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ]));
            run(command.args(args), what)
        };
        log("apt-get update");
        apt(&["update"], "apt-get update")?;
        log("apt-get dist-upgrade (security and stable updates)");
        apt(&["dist-upgrade"], "apt-get dist-upgrade")?;
        log(&format!("apt-get install {}", recipe.packages.join(" ")));
        let mut install = vec!["install", "--no-install-recommends"];
        install.extend(recipe.packages.iter().map(String::as_str));
        apt(&install, "apt-get install")?;

        let packages = chroot_output(root, &["dpkg", "-l"], "dpkg -l")?;
        let architecture = chroot_output(
            root,
            &["dpkg", "--print-architecture"],
            "dpkg --print-architecture",
        )?
        .trim()
        .to_string();
        let dev_tools = dev_tools_files(root, &recipe.dev_tools)?;
        Lists {
            packages,
            dev_tools,
            architecture,
        }
    };
    remove_if_present(&checked_path(root, "usr/sbin/policy-rc.d")?)?;
    Ok(lists)
}

/// The files (not directories) of the installed packages among `packages`, sorted, one a
/// line, as absolute paths inside the image.
fn dev_tools_files(root: &Path, packages: &[String]) -> Result<String, BuildError> {
    let status = chroot_output(
        root,
        &[
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${db:Status-Status}\\n",
        ],
        "dpkg-query -W",
    )?;
    let installed: Vec<&str> = status
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name)
        .filter(|name| packages.iter().any(|p| p == name))
        .collect();
    if installed.is_empty() {
        return Ok(String::new());
    }
    let mut args = vec!["dpkg-query", "-L"];
    args.extend(installed);
    let listed = chroot_output(root, &args, "dpkg-query -L")?;
    let mut files: Vec<&str> = listed
        .lines()
        .filter(|line| line.starts_with('/'))
        .filter(|line| {
            fs::symlink_metadata(root.join(line.trim_start_matches('/'))).is_ok_and(|m| !m.is_dir())
        })
        .collect();
    files.sort_unstable();
    files.dedup();
    Ok(files.iter().map(|f| format!("{f}\n")).collect())
}

/// The build date: `SOURCE_DATE_EPOCH` when set (reproducible builds), else today (UTC).
fn build_date() -> Result<Date, BuildError> {
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let text = epoch.to_string_lossy();
        let seconds = text.trim().parse::<i64>().map_err(|_| {
            BuildError::Other(format!("SOURCE_DATE_EPOCH '{text}' is not a Unix time"))
        })?;
        return Ok(Date::from_unix(seconds));
    }
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| BuildError::Other("the clock is before 1970".to_string()))?
        .as_secs();
    Ok(Date::from_unix(i64::try_from(seconds).unwrap_or(i64::MAX)))
}

/// Writes one stemcell tarball into `output` with the one atomic write (`secrets`).
fn write_stemcell(
    output: &Path,
    manifest: &StemcellManifest,
    image: &Path,
    lists: &Lists,
) -> Result<PathBuf, BuildError> {
    let path = output.join(tarball_name(manifest));
    let bytes = |path: &str, data: &str| TgzEntry {
        path: path.to_string(),
        source: TgzSource::Bytes {
            data: data.as_bytes().to_vec(),
            executable: false,
        },
    };
    let entries = vec![
        bytes("stemcell.MF", &manifest.to_yaml()),
        TgzEntry {
            path: "image".to_string(),
            source: TgzSource::File {
                path: image.to_path_buf(),
                executable: false,
            },
        },
        bytes("packages.txt", &lists.packages),
        bytes("dev_tools_file_list.txt", &lists.dev_tools),
    ];
    secrets::write_atomic_with(&path, 0o644, |file| {
        let writer = write_tgz(BufWriter::with_capacity(1 << 20, &*file), entries)?;
        writer.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
    .map_err(io_error("write", &path))?;
    Ok(path)
}

/// Runs a command with its output on our stderr (stdout stays for data).
fn run(command: &mut Command, what: &str) -> Result<(), BuildError> {
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_error("duplicate", Path::new("stderr")))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|source| spawn_error(command, source))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Command {
            what: what.to_string(),
            command: command_line(command),
            status: status.to_string(),
            output: String::new(),
        })
    }
}

/// Runs a command inside the root and returns its standard output.
fn chroot_output(root: &Path, args: &[&str], what: &str) -> Result<String, BuildError> {
    let mut command = Command::new("chroot");
    chroot_env(command.arg(root).args(args));
    // dpkg -l cuts names to the terminal's width; give it room.
    command.env("COLUMNS", "200");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(&command, source))?;
    if !output.status.success() {
        return Err(BuildError::Command {
            what: what.to_string(),
            command: command_line(&command),
            status: output.status.to_string(),
            output: format!("\n{}", String::from_utf8_lossy(&output.stderr).trim_end()),
        });
    }
    String::from_utf8(output.stdout)
        .map_err(|_| BuildError::Other(format!("{what}: output is not UTF-8")))
}

/// The environment of commands inside the root: the host's proxies and nothing else of it.
fn chroot_env(command: &mut Command) -> &mut Command {
    let proxies: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| {
            matches!(
                key.to_ascii_lowercase().as_str(),
                "http_proxy" | "https_proxy" | "ftp_proxy" | "no_proxy"
            )
        })
        .collect();
    command
        .env_clear()
        .env("PATH", ROOT_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .envs(proxies)
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_error(command: &Command, source: io::Error) -> BuildError {
    BuildError::Io {
        action: "run",
        path: command.get_program().to_string_lossy().into_owned(),
        source,
    }
}

/// `relative` below `root`, after checking that no existing part of it is a symlink: the
/// image's links (`/var/run -> /run`) are meant for the image, and followed from the host
/// they would lead into the host's own files.
fn checked_path(root: &Path, relative: &str) -> Result<PathBuf, BuildError> {
    let mut path = root.to_path_buf();
    for component in Path::new(relative).components() {
        let Component::Normal(part) = component else {
            return Err(BuildError::Other(format!(
                "'{relative}' is not a plain relative path"
            )));
        };
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(BuildError::Other(format!(
                    "{} is a symlink in the image; refusing to write through it from the \
                     build host",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("read", &path)(error)),
        }
    }
    Ok(path)
}

fn remove_if_present(path: &Path) -> Result<(), BuildError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error("remove", path)(error))
        }
        _ => Ok(()),
    }
}

/// What to write into the root.
enum Content<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Writes a file at `relative` below `root` (replacing what is there, creating parent
/// directories), owned by root with `mode`, never through a symlink.
fn write_in_root(
    root: &Path,
    relative: &str,
    content: Content<'_>,
    mode: u32,
) -> Result<(), BuildError> {
    let path = checked_path(root, relative)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    remove_if_present(&path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io_error("create", &path))?;
    match content {
        Content::Bytes(bytes) => file.write_all(bytes).map_err(io_error("write", &path))?,
        Content::File(source) => {
            let mut from = File::open(source).map_err(io_error("read", source))?;
            io::copy(&mut from, &mut file).map_err(io_error("write", &path))?;
        }
    }
    // The mode given to open is filtered by the umask.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", &path))
}

/// `/proc` mounted inside the root while packages install; unmounted when dropped.
struct Mount {
    target: PathBuf,
}

impl Mount {
    fn proc(root: &Path) -> Result<Mount, BuildError> {
        let target = checked_path(root, "proc")?;
        fs::create_dir_all(&target).map_err(io_error("create", &target))?;
        run(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(&target),
            "mounting /proc in the root",
        )?;
        Ok(Mount { target })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a daemon a package started anyway): detach it now, it goes when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

/// The build's work directory; removed at the end (also after a failure) unless kept, and
/// only when nothing is mounted below it: removing a tree with `/proc` or a bind mount in it
/// would reach into the host.
struct WorkDir {
    path: PathBuf,
    keep: bool,
    done: bool,
}

impl WorkDir {
    fn create(parent: &Path, keep: bool) -> Result<WorkDir, BuildError> {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let dir = tempfile::Builder::new()
            .prefix("build-stemcell-")
            .tempdir_in(parent)
            .map_err(io_error("create a work directory in", parent))?;
        Ok(WorkDir {
            path: dir.keep(),
            keep,
            done: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory (or keeps it, returning where it is).
    fn finish(&mut self) -> Result<Option<PathBuf>, BuildError> {
        self.done = true;
        if self.keep {
            return Ok(Some(self.path.clone()));
        }
        self.remove()?;
        Ok(None)
    }

    fn remove(&self) -> Result<(), BuildError> {
        let mounted = mounts_below(&self.path)
            .map_err(io_error("read", Path::new("/proc/self/mountinfo")))?;
        if let Some(mount) = mounted.first() {
            return Err(BuildError::Other(format!(
                "{} is still mounted; not removing the work directory {} (unmount it and \
                 remove the directory by hand)",
                mount.display(),
                self.path.display()
            )));
        }
        fs::remove_dir_all(&self.path).map_err(io_error("remove", &self.path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.keep {
            eprintln!(
                "build-stemcell: work directory kept: {}",
                self.path.display()
            );
        } else if let Err(error) = self.remove() {
            eprintln!("build-stemcell: {error}");
        }
    }
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&text)
        .into_iter()
        .filter(|mount| mount.starts_with(dir))
        .collect())
}

/// The mount points of a `mountinfo` text (field 5, with `\040`-style escapes undone).
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escaped {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:5 / /var/tmp/build\\040stemcell/rootfs/proc rw,nosuid - proc proc rw
";
        assert_eq!(
            mount_points(mountinfo),
            [
                PathBuf::from("/"),
                PathBuf::from("/var/tmp/build stemcell/rootfs/proc")
            ]
        );
        assert!(
            PathBuf::from("/var/tmp/build stemcell/rootfs/proc")
                .starts_with("/var/tmp/build stemcell")
        );
    }

    #[test]
    fn files_are_never_written_through_links_of_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("var")).unwrap();
        symlink(outside.join("resolv.conf"), root.join("etc/resolv.conf")).unwrap();
        let error = write_in_root(&root, "var/x", Content::Bytes(b"x"), 0o644).unwrap_err();
        assert!(error.to_string().ends_with("/root/var is a symlink in the image; refusing to write through it from the build host"), "{error}");
        let error =
            write_in_root(&root, "etc/resolv.conf", Content::Bytes(b"x"), 0o644).unwrap_err();
        assert!(error.to_string().contains("symlink"), "{error}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

        write_in_root(
            &root,
            "var2/vcap/bosh/agent.json",
            Content::Bytes(b"{}"),
            0o600,
        )
        .unwrap();
        let written = root.join("var2/vcap/bosh/agent.json");
        assert_eq!(fs::read(&written).unwrap(), b"{}");
        assert_eq!(fs::metadata(&written).unwrap().mode() & 0o777, 0o600);
        assert!(checked_path(&root, "../x").is_err());
    }

    #[test]
    fn a_missing_agent_fails_first_and_clearly() {
        let options = BuildOptions {
            agent: PathBuf::from("/nonexistent/bosh-agent"),
            output: PathBuf::from("/nonexistent/out"),
            formats: Format::ALL.to_vec(),
            mirror: None,
            security_mirror: None,
            version: None,
            work_parent: None,
            keep_work_dir: false,
            base_cache: None,
            base_only: false,
        };
        let error = build(&options, &|_| {}).unwrap_err();
        assert_eq!(
            error.to_string(),
            "agent binary /nonexistent/bosh-agent does not exist; build the agent (the `agent` \
             crate) and pass its binary with --agent"
        );
        let dir = tempfile::tempdir().unwrap();
        let error = build(
            &BuildOptions {
                agent: dir.path().to_path_buf(),
                ..options.clone()
            },
            &|_| {},
        )
        .unwrap_err();
        assert!(
            error.to_string().ends_with("is not a regular file"),
            "{error}"
        );
        let agent = dir.path().join("agent");
        fs::write(&agent, "").unwrap();
        let error = build(
            &BuildOptions {
                agent,
                version: Some("12..8".into()),
                ..options
            },
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--version: '12..8' is not a stemcell version (e.g. 12.8.20261126)"
        );
    }
}
