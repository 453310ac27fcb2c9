//! `build-stemcell`: builds Debian bookworm stemcells for the docker and local CPIs (see
//! [`stemcells::build`]). Progress goes to stderr, the paths of the tarballs to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use stemcells::{BuildOptions, Format, build};

/// Build Debian bookworm stemcells (needs root and a Debian mirror).
///
/// The mirror comes from the host's APT sources unless --mirror names one. The version is
/// Debian's point release and today's date (12.8.20261126) unless --version names one, so
/// a rebuild after a Debian security update is a newer stemcell.
#[derive(Debug, Parser)]
#[command(name = "build-stemcell")]
struct Args {
    /// The agent binary, installed as /var/vcap/bosh/bin/bosh-agent.
    #[arg(long, value_name = "PATH", required_unless_present = "base_only")]
    agent: Option<PathBuf>,
    /// Where the stemcell tarballs are written.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Which stemcells to build [default: docker-rootfs,local].
    #[arg(long, value_name = "FORMAT", value_delimiter = ',', value_parser = parse_format)]
    format: Vec<Format>,
    /// The Debian archive to build from [default: the first in the host's APT sources].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// The Debian security archive [default: the first in the host's APT sources].
    #[arg(long, value_name = "URL")]
    security_mirror: Option<String>,
    /// The stemcell version [default: <point release>.<YYYYMMDD>].
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Where to make the work directory (about 1.5 GB).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep the work directory (root file system and image) after the build.
    #[arg(long)]
    keep_work_dir: bool,
    /// Reuse the root file system (debootstrap, packages, post-install) a build with the
    /// same recipe and mirrors kept in DIR, or keep this one there. For development and
    /// tests: leave it out to get today's security fixes.
    #[arg(long, value_name = "DIR")]
    base_cache: Option<PathBuf>,
    /// Only make the root file system and keep it in --base-cache (no agent, no stemcell):
    /// fills the cache ahead of the builds that use it.
    #[arg(long, requires = "base_cache")]
    base_only: bool,
}

fn parse_format(text: &str) -> Result<Format, String> {
    text.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut formats = if args.format.is_empty() {
        Format::ALL.to_vec()
    } else {
        args.format
    };
    formats.sort();
    formats.dedup();
    let options = BuildOptions {
        agent: args.agent.unwrap_or_default(),
        output: args.output,
        formats,
        mirror: args.mirror,
        security_mirror: args.security_mirror,
        version: args.version,
        work_parent: Some(args.work_dir),
        keep_work_dir: args.keep_work_dir,
        base_cache: args.base_cache,
        base_only: args.base_only,
    };
    let log = |line: &str| eprintln!("build-stemcell: {line}");
    match build(&options, &log) {
        Ok(report) => {
            let total: f64 = report.steps.iter().map(|(_, d)| d.as_secs_f64()).sum();
            if options.base_only {
                log(&format!("root file system cached in {total:.0}s"));
                return ExitCode::SUCCESS;
            }
            log(&format!(
                "built version {} in {total:.0}s (image: {} bytes, {} entries)",
                report.version, report.image_size, report.image_entries
            ));
            for output in &report.outputs {
                println!("{}", output.path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("build-stemcell: error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "build-stemcell",
            "--agent",
            "a",
            "--format",
            "local,docker-rootfs",
            "--version",
            "12.8.1",
        ])
        .unwrap();
        assert_eq!(args.format, [Format::Local, Format::DockerRootfs]);
        assert_eq!(args.version.as_deref(), Some("12.8.1"));
        let error = Args::try_parse_from(["build-stemcell", "--agent", "a", "--format", "vmdk"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown format 'vmdk'"), "{error}");
        assert!(
            Args::try_parse_from(["build-stemcell"]).is_err(),
            "--agent is required"
        );
    }
}
