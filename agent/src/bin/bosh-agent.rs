//! `bosh-agent --settings PATH [--root DIR]`: the agent a VM runs.
//!
//! Reads the settings the CPI wrote, stops whatever a previous agent left running and starts
//! the jobs again when they should run, then serves the director on the bus until SIGTERM
//! or SIGINT, when it stops the jobs' processes (they start again with the next agent).

use std::path::PathBuf;
use std::process::ExitCode;

use agent::settings::SettingsFile;
use agent::{Agent, Layout, agent_log, bus};

const USAGE: &str = "usage: bosh-agent --settings PATH [--root DIR]

  --settings PATH  the settings file the CPI wrote (agent id, bus, blobstore, disks)
  --root DIR       where jobs, packages, data and logs live (default /var/vcap)";

struct Options {
    settings: PathBuf,
    root: PathBuf,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut settings = None;
    let mut root = PathBuf::from("/var/vcap");
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--settings" => settings = Some(PathBuf::from(value("--settings")?)),
            "--root" => root = PathBuf::from(value("--root")?),
            "-h" | "--help" => return Ok(None),
            "--version" => {
                println!("bosh-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let settings = settings.ok_or("--settings is required")?;
    Ok(Some(Options { settings, root }))
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("bosh-agent: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Jobs get the usual umask whatever the process that started us had (a director runs
    // with 077 to keep its own files private); the agent's secrets are written 0600 anyway.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bosh-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(options))
}

async fn run(options: Options) -> ExitCode {
    let layout = Layout::new(options.root);
    let agent = match Agent::new(layout, SettingsFile::new(&options.settings)) {
        Ok(agent) => agent,
        Err(e) => {
            agent_log!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    agent_log!(
        "bosh-agent {} starting: root {}, settings {}",
        env!("CARGO_PKG_VERSION"),
        agent.layout().root().display(),
        options.settings.display()
    );
    let (mut terminate, mut interrupt) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            agent_log!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    agent.boot().await;
    let mut serving = tokio::spawn(bus::serve(agent.clone()));
    let code = tokio::select! {
        _ = terminate.recv() => { agent_log!("SIGTERM: stopping"); ExitCode::SUCCESS }
        _ = interrupt.recv() => { agent_log!("SIGINT: stopping"); ExitCode::SUCCESS }
        result = &mut serving => {
            match result {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => { agent_log!("bus: {e}"); ExitCode::FAILURE }
                Err(e) => { agent_log!("bus task: {e}"); ExitCode::FAILURE }
            }
        }
    };
    serving.abort();
    agent.shutdown().await;
    agent_log!("stopped");
    code
}
