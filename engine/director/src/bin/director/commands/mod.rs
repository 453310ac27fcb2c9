//! One module per verb; each parses nothing itself and calls one engine function.

mod add_blob;
mod blobs;
mod completion;
mod create_release;
mod deploy;
mod deployments;
mod diff;
mod director;
mod export_release;
mod inspect_release;
mod interpolate;
mod validate;

use ::director::client::UploadKind;
use director_api::{ConfigKind, StateChange};
use director_core::interpolate::{Expectations, VarFlags};
use director_core::template::TemplateInputs;

use crate::cli::{Cli, Command, OpsArgs, VarArgs};
use crate::ui::Ui;

/// What the CLI's own work (reading local tarballs, building a local stemcell, downloading
/// a blob) can fail with; each names the file or argument concerned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    /// An argument does not have the expected shape.
    #[error("{given:?}: expected {expected}")]
    Argument {
        /// What was given.
        given: String,
        /// What is accepted, with where to find values.
        expected: String,
    },
    /// A local file could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tarball could not be read.
    #[error(transparent)]
    Archive(#[from] director_core::archive::ArchiveError),
    /// A tarball's manifest is not what it should be.
    #[error("{file}: {problem}")]
    Manifest {
        /// The tarball, or the manifest inside it.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The local stemcell could not be built.
    #[error(transparent)]
    Stemcell(#[from] director_core::stemcell::local::LocalStemcellError),
    /// The director refused or failed a call.
    #[error(transparent)]
    Client(#[from] director_api::client::ClientError),
    /// A download does not have the digest the director has.
    #[error("the downloaded {file} has digest sha256:{actual}, but the director has {expected}")]
    Digest {
        /// The file written.
        file: String,
        /// Its digest (hex).
        actual: String,
        /// The director's (`sha256:<hex>`).
        expected: String,
    },
}

impl LocalError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
        let context = context.into();
        move |source| LocalError::Io { context, source }
    }
}

/// Runs the verb and returns the exit code.
pub fn run(cli: Cli, ui: &mut Ui) -> u8 {
    match cli.command {
        Command::Interpolate(args) => interpolate::run(args, ui),
        Command::Validate(args) => validate::run(args, ui),
        Command::Diff(args) => diff::run(args, ui),
        Command::Completion(args) => completion::run(args, ui),
        Command::CreateRelease(args) => create_release::run(args, ui),
        Command::InspectRelease(args) => inspect_release::run(args, ui),
        Command::AddBlob(args) => add_blob::run(args, ui),
        Command::Blobs(args) => blobs::run(args, ui),
        Command::Serve(args) => director::serve(args, ui),
        Command::Status => director::status(&cli.global, ui),
        Command::StopServer => director::stop_server(&cli.global, ui),
        Command::UploadRelease(args) => {
            director::upload(&cli.global, UploadKind::Release, args, ui)
        }
        Command::UploadStemcell(args) => {
            director::upload(&cli.global, UploadKind::Stemcell, args, ui)
        }
        Command::Releases => director::releases(&cli.global, ui),
        Command::Stemcells => director::stemcells(&cli.global, ui),
        Command::DeleteRelease(args) => director::delete_release(&cli.global, args, ui),
        Command::ExportRelease(args) => export_release::run(&cli.global, args, ui),
        Command::DeleteStemcell(args) => director::delete_stemcell(&cli.global, args, ui),
        Command::Tasks(args) => director::tasks(&cli.global, args, ui),
        Command::Task(args) => director::task(&cli.global, args, ui),
        Command::CancelTask(args) => director::cancel_task(&cli.global, args, ui),
        Command::CleanUp(args) => director::clean_up(&cli.global, args, ui),
        Command::UpdateCloudConfig(args) => {
            deployments::update_config(&cli.global, ConfigKind::Cloud, args, ui)
        }
        Command::CloudConfig => deployments::config(&cli.global, ConfigKind::Cloud, ui),
        Command::UpdateRuntimeConfig(args) => {
            deployments::update_config(&cli.global, ConfigKind::Runtime, args, ui)
        }
        Command::RuntimeConfig => deployments::config(&cli.global, ConfigKind::Runtime, ui),
        Command::UpdateConfig(args) => match config_kind(&args.kind, ui) {
            Ok(kind) => deployments::update_config(&cli.global, kind, args.config, ui),
            Err(code) => code,
        },
        Command::Config(args) => match config_kind(&args.kind, ui) {
            Ok(kind) => deployments::config(&cli.global, kind, ui),
            Err(code) => code,
        },
        Command::Deploy(args) => deploy::run(&cli.global, args, ui),
        Command::Deployments => deployments::deployments(&cli.global, ui),
        Command::Instances(args) => deployments::instances(&cli.global, args, ui),
        Command::Vms(args) => deployments::vms(&cli.global, args, ui),
        Command::Manifest => deployments::manifest(&cli.global, ui),
        Command::Events(args) => deployments::events(&cli.global, args, ui),
        Command::UpdateResurrection(args) => director::update_resurrection(&cli.global, args, ui),
        Command::Start(args) => {
            deployments::change_state(&cli.global, StateChange::Start, args, ui)
        }
        Command::Stop(args) => deployments::change_state(&cli.global, StateChange::Stop, args, ui),
        Command::Restart(args) => {
            deployments::change_state(&cli.global, StateChange::Restart, args, ui)
        }
        Command::Recreate(args) => {
            deployments::change_state(&cli.global, StateChange::Recreate, args, ui)
        }
        Command::CloudCheck(args) => deployments::cloud_check(&cli.global, args, ui),
        Command::RunErrand(args) => deployments::run_errand(&cli.global, args, ui),
        Command::Logs(args) => deployments::logs(&cli.global, args, ui),
        Command::DeleteDeployment(args) => deployments::delete_deployment(&cli.global, args, ui),
        Command::OrphanedDisks => deployments::orphaned_disks(&cli.global, ui),
        Command::DeleteDisk(args) => deployments::delete_disk(&cli.global, args, ui),
    }
}

/// The engine's view of the shared template flags.
pub fn template_inputs(
    ops: &OpsArgs,
    vars: &VarArgs,
    vars_store: Option<std::path::PathBuf>,
    expectations: Expectations,
) -> TemplateInputs {
    TemplateInputs {
        ops_files: ops.ops_files.clone(),
        var_flags: VarFlags {
            vars: vars.vars.clone(),
            var_files: vars.var_files.clone(),
            vars_files: vars.vars_files.clone(),
            vars_env: vars.vars_env.clone(),
        },
        vars_store,
        expectations,
    }
}

/// `--type`'s value as a config kind (clap has checked it; a mismatch is still said, not
/// a panic).
fn config_kind(text: &str, ui: &mut Ui) -> Result<ConfigKind, u8> {
    text.parse()
        .map_err(|error: director_api::deployments::UnknownValue| {
            ui.say(&format!("error: --type: {error}"));
            2
        })
}
