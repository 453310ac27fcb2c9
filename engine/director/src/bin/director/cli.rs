//! Flags and verbs, declared once as data; help and completions come from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Deploy and operate distributed systems described in BOSH manifests.
#[derive(Debug, Parser)]
#[command(
    name = "director",
    version,
    about = "Deploy and operate distributed systems described in BOSH manifests",
    max_term_width = 100
)]
pub struct Cli {
    /// Options every verb takes (before or after the verb).
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb takes.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Deployment name
    #[arg(
        short = 'd',
        long = "deployment",
        global = true,
        env = "DIRECTOR_DEPLOYMENT"
    )]
    pub deployment: Option<String>,
    /// Don't ask for confirmation
    #[arg(short = 'n', long = "non-interactive", global = true)]
    pub non_interactive: bool,
    /// Print data as JSON on stdout (and nothing else there)
    #[arg(long = "json", global = true)]
    pub json: bool,
    /// Don't color output
    #[arg(long = "no-color", global = true)]
    pub no_color: bool,
    /// The director's URL, or `dev` for this user's dev director (default: the CLI config, else a dev director started on demand)
    #[arg(
        long = "director",
        global = true,
        env = "DIRECTOR_URL",
        value_name = "URL"
    )]
    pub director: Option<String>,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply ops files and variables to a YAML file and print the result (as bosh interpolate)
    #[command(visible_alias = "int")]
    Interpolate(InterpolateArgs),
    /// Check a deployment manifest (and cloud/runtime configs) offline; report every problem
    Validate(ValidateArgs),
    /// Show what changes between two manifests, secrets redacted
    Diff(DiffArgs),
    /// Print a shell completion script
    Completion(CompletionArgs),
    /// Build a release tarball from a release directory (as bosh create-release)
    CreateRelease(CreateReleaseArgs),
    /// Show the jobs and packages of a release tarball or release directory
    InspectRelease(InspectReleaseArgs),
    /// Copy a file into the release's blobs/ and track it in config/blobs.yml
    AddBlob(AddBlobArgs),
    /// List the blobs of a release directory
    Blobs(BlobsArgs),
    /// Run the director (the API server)
    Serve(ServeArgs),
    /// Show the director this CLI talks to: URL, version, state, blobstore, bus, CPI
    Status,
    /// Stop the dev director this CLI started
    StopServer,
    /// Upload a release tarball, a release directory (created first) or an http(s) URL
    UploadRelease(UploadArgs),
    /// List uploaded releases
    Releases,
    /// Delete a release (NAME) or one version of it (NAME/VERSION)
    DeleteRelease(DeleteArgs),
    /// Download a release compiled for a stemcell as a compiled release tarball
    ExportRelease(ExportReleaseArgs),
    /// Upload a stemcell tarball or an http(s) URL
    UploadStemcell(UploadArgs),
    /// List uploaded stemcells (and which deployments use them)
    Stemcells,
    /// Delete a stemcell (NAME/VERSION)
    DeleteStemcell(DeleteArgs),
    /// List running tasks (or recent ones)
    Tasks(TasksArgs),
    /// Show a task's output, following it while it runs
    Task(TaskArgs),
    /// Cancel a task (it stops at its next step)
    CancelTask(CancelTaskArgs),
    /// Remove releases, stemcells and blobs that nothing uses
    CleanUp(CleanUpArgs),
    /// Set the cloud config (AZs, VM types, disk types, networks, compilation)
    UpdateCloudConfig(ConfigArgs),
    /// Print the cloud config
    CloudConfig,
    /// Set the runtime config (releases and addons for every deployment)
    UpdateRuntimeConfig(ConfigArgs),
    /// Set a config by type (cloud, runtime, resurrection), BOSH's update-config
    UpdateConfig(TypedConfigArgs),
    /// Print a config by type (cloud, runtime, resurrection)
    Config(ConfigTypeArgs),
    /// Print the runtime config
    RuntimeConfig,
    /// Deploy a manifest: show the diff and the instance plan, ask, then roll it out
    Deploy(DeployArgs),
    /// List deployments
    Deployments,
    /// List the instances of a deployment (-d)
    Instances(InstancesArgs),
    /// List the VMs of a deployment (-d)
    Vms(VmsArgs),
    /// Print the manifest a deployment was last deployed with (-d)
    Manifest,
    /// Show the director's events (what changed, when, by which task)
    Events(EventsArgs),
    /// Turn the resurrector on or off for every deployment
    UpdateResurrection(ResurrectionArgs),
    /// Start the jobs of instances (-d; all, a GROUP, or GROUP/ID)
    Start(TargetArgs),
    /// Drain and stop the jobs of instances (-d; all, a GROUP, or GROUP/ID)
    Stop(TargetArgs),
    /// Drain, stop and start the jobs of instances (-d; all, a GROUP, or GROUP/ID)
    Restart(TargetArgs),
    /// Replace the VMs of instances, keeping their disks (-d; all, a GROUP, or GROUP/ID)
    Recreate(TargetArgs),
    /// Run an errand (an instance group with lifecycle: errand) of a deployment (-d)
    RunErrand(ErrandArgs),
    /// Scan a deployment (-d) for missing VMs, silent agents and disk problems, and resolve them
    #[command(name = "cloud-check", visible_alias = "cck")]
    CloudCheck(CloudCheckArgs),
    /// Download the job logs of instances (-d; all, a GROUP, or GROUP/ID)
    Logs(LogsArgs),
    /// Delete a deployment (-d): its VMs and addresses; its disks are orphaned
    DeleteDeployment(DeleteDeploymentArgs),
    /// List persistent disks no instance uses any more
    OrphanedDisks,
    /// Delete an orphaned persistent disk and its data
    DeleteDisk(DeleteDiskArgs),
}

/// `update-cloud-config` / `update-runtime-config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The config file
    pub file: PathBuf,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// `update-config --type T [--name default] FILE`.
#[derive(Debug, Args)]
pub struct TypedConfigArgs {
    /// cloud, runtime or resurrection
    #[arg(long = "type", value_name = "TYPE", value_parser = ["cloud", "runtime", "resurrection"])]
    pub kind: String,
    /// The config's name (only `default` for now)
    #[arg(long = "name", default_value = "default", value_parser = ["default"])]
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `config --type T [--name default]`.
#[derive(Debug, Args)]
pub struct ConfigTypeArgs {
    /// cloud, runtime or resurrection
    #[arg(long = "type", value_name = "TYPE", value_parser = ["cloud", "runtime", "resurrection"])]
    pub kind: String,
    /// The config's name (only `default` for now)
    #[arg(long = "name", default_value = "default", value_parser = ["default"])]
    pub name: String,
}

/// `director deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The deployment manifest
    pub manifest: PathBuf,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Load and save variables (generated ones are added; existing ones never change)
    #[arg(long = "vars-store", value_name = "PATH")]
    pub vars_store: Option<PathBuf>,
    /// Recreate every VM, even unchanged ones
    #[arg(long = "recreate")]
    pub recreate: bool,
    /// Skip drain scripts
    #[arg(long = "skip-drain")]
    pub skip_drain: bool,
    /// Recreate instances whose agents do not answer instead of failing
    #[arg(long = "fix")]
    pub fix: bool,
    /// Show the diff and the plan, change nothing; exit 2 when there are changes, 0 when none
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Canaries for every group (a number or a percentage), overriding the manifest
    #[arg(long = "canaries", value_name = "N")]
    pub canaries: Option<String>,
    /// Instances updated at once per group (a number or a percentage), overriding the manifest
    #[arg(long = "max-in-flight", value_name = "N|P%")]
    pub max_in_flight: Option<String>,
    /// Show secret values in the diff instead of <redacted>
    #[arg(long = "no-redact")]
    pub no_redact: bool,
}

/// `director instances`.
#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// Show each instance's processes and their state (asks the agents)
    #[arg(short = 'p', long = "ps")]
    pub ps: bool,
    /// Show VM ids, agent ids, disks and bootstrap
    #[arg(short = 'i', long = "details")]
    pub details: bool,
}

/// `director vms`.
#[derive(Debug, Args)]
pub struct VmsArgs {
    /// Show load, CPU, memory and disk use (asks the agents)
    #[arg(long = "vitals")]
    pub vitals: bool,
}

/// `director events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Show at most N events
    #[arg(long = "limit", value_name = "N", default_value_t = 50)]
    pub limit: u32,
}

/// `start` / `stop` / `restart` / `recreate`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// GROUP or GROUP/ID (or GROUP/INDEX); every instance when left out
    pub target: Option<String>,
    /// Skip drain scripts
    #[arg(long = "skip-drain")]
    pub skip_drain: bool,
}

/// `director logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// GROUP or GROUP/ID (or GROUP/INDEX); every instance with a VM when left out
    pub target: Option<String>,
    /// Where to write DEPLOYMENT.GROUP.INDEX-YYYYMMDD-HHMMSS.tgz
    #[arg(long = "dir", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// `director run-errand`.
#[derive(Debug, Args)]
pub struct ErrandArgs {
    /// The errand (its instance group's name)
    pub name: String,
}

/// `director cloud-check` (`cck`).
#[derive(Debug, Args)]
pub struct CloudCheckArgs {
    /// Apply each problem's default resolution
    #[arg(long = "auto", short = 'a', conflicts_with_all = ["resolution", "report"])]
    pub auto: bool,
    /// Apply this resolution to every problem that offers it (recreate_vm, delete_disk…)
    #[arg(long = "resolution", value_name = "NAME", conflicts_with = "report")]
    pub resolution: Option<String>,
    /// Only list the problems: exit 2 when there are any, 0 when there are none
    #[arg(long = "report", short = 'r')]
    pub report: bool,
}

/// `director delete-disk`.
#[derive(Debug, Args)]
pub struct DeleteDiskArgs {
    /// The disk's CID (see `director orphaned-disks`)
    pub cid: String,
}

/// `director delete-deployment`.
#[derive(Debug, Args)]
pub struct DeleteDeploymentArgs {
    /// Go on past instances that cannot be deleted cleanly
    #[arg(long = "force")]
    pub force: bool,
}

/// `director serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The director configuration (director.yml)
    #[arg(long = "config", value_name = "PATH", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Dev mode: SQLite, local blobstore, all under $XDG_DATA_HOME/director; targets the CLI config at it unless that names another director
    #[arg(long = "dev")]
    pub dev: bool,
    /// Serve plain HTTP on an address other hosts reach (the token then crosses the network in clear)
    #[arg(long = "insecure-http")]
    pub insecure_http: bool,
}

/// `upload-release` / `upload-stemcell`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// A tarball, a release directory, or an http(s) URL
    pub source: String,
    /// The expected sha256 of the tarball (sha256:HEX or HEX)
    #[arg(long = "sha256", value_name = "DIGEST")]
    pub sha256: Option<String>,
    /// Upload again even if already uploaded (re-stores missing or damaged blobs)
    #[arg(long = "fix")]
    pub fix: bool,
}

/// `director export-release`.
#[derive(Debug, Args)]
pub struct ExportReleaseArgs {
    /// The release version, NAME/VERSION (see `director releases`)
    #[arg(value_name = "NAME/VERSION")]
    pub release: String,
    /// The stemcell its packages were compiled on, OS/VERSION (see `director stemcells`)
    #[arg(value_name = "OS/VERSION")]
    pub stemcell: String,
    /// Where to write NAME-VERSION-OS-STEMCELL_VERSION.tgz
    #[arg(long = "dir", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// `delete-release` / `delete-stemcell`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// NAME or NAME/VERSION
    pub name: String,
    /// Ignore what is already gone
    #[arg(long = "force")]
    pub force: bool,
}

/// `director tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Show the N most recent tasks in any state (default 30)
    #[arg(short = 'r', long = "recent", value_name = "N", num_args = 0..=1, default_missing_value = "30")]
    pub recent: Option<u32>,
    /// Include the tasks of every deployment (with -d, only that deployment's are shown)
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

/// `director task`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The task id
    pub id: i64,
    /// Show the event log (the default)
    #[arg(long = "event", conflicts_with_all = ["debug", "result"])]
    pub event: bool,
    /// Show the debug log
    #[arg(long = "debug", conflicts_with = "result")]
    pub debug: bool,
    /// Show the result
    #[arg(long = "result")]
    pub result: bool,
}

/// `director cancel-task`.
#[derive(Debug, Args)]
pub struct CancelTaskArgs {
    /// The task id
    pub id: i64,
}

/// `director update-resurrection on|off`.
#[derive(Debug, Args)]
pub struct ResurrectionArgs {
    /// `on` recreates unresponsive instances again (meltdown counts from now on); `off` leaves
    /// them alone
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
}

/// `director clean-up`.
#[derive(Debug, Args)]
pub struct CleanUpArgs {
    /// Remove every unused release and stemcell version (default: keep the two newest of each)
    /// and every orphaned disk (default: keep them)
    #[arg(long = "all")]
    pub all: bool,
}

/// `-o` flags.
#[derive(Debug, Args, Clone, Default)]
pub struct OpsArgs {
    /// Ops file to apply, in order (go-patch)
    #[arg(short = 'o', long = "ops-file", value_name = "PATH")]
    pub ops_files: Vec<PathBuf>,
}

/// Variable flags shared by every verb that reads manifests.
#[derive(Debug, Args, Clone, Default)]
pub struct VarArgs {
    /// Set a variable: NAME=VALUE (the value is read as YAML: 3 is a number, {a: 1} a map)
    #[arg(short = 'v', long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Set a variable to a file's contents: NAME=PATH
    #[arg(long = "var-file", value_name = "NAME=PATH")]
    pub var_files: Vec<String>,
    /// Load variables from a YAML file
    #[arg(short = 'l', long = "vars-file", value_name = "PATH")]
    pub vars_files: Vec<PathBuf>,
    /// Load variables from environment variables PREFIX_name (values read as YAML)
    #[arg(long = "vars-env", value_name = "PREFIX")]
    pub vars_env: Vec<String>,
}

/// `director interpolate`.
#[derive(Debug, Args)]
pub struct InterpolateArgs {
    /// The YAML file
    pub file: PathBuf,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Load and save variables (generated ones are added; existing ones never change)
    #[arg(long = "vars-store", value_name = "PATH")]
    pub vars_store: Option<PathBuf>,
    /// Fail if a variable is not found
    #[arg(long = "var-errs")]
    pub var_errs: bool,
    /// Fail if a given variable is not used
    #[arg(long = "var-errs-unused")]
    pub var_errs_unused: bool,
    /// Print only the value at this path (go-patch syntax, e.g. /instance_groups/name=web/instances)
    #[arg(long = "path", value_name = "PATH")]
    pub path: Option<String>,
}

/// `director validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The deployment manifest
    pub manifest: PathBuf,
    /// Check references against this cloud config
    #[arg(long = "cloud-config", value_name = "PATH")]
    pub cloud_config: Option<PathBuf>,
    /// Check this runtime config too
    #[arg(long = "runtime-config", value_name = "PATH")]
    pub runtime_config: Option<PathBuf>,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Read variables from this vars store (missing declared ones are generated, not saved)
    #[arg(long = "vars-store", value_name = "PATH")]
    pub vars_store: Option<PathBuf>,
}

/// Output formats of `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// BOSH-style +/- YAML lines
    Text,
    /// Lines and structured changes as one JSON document
    Json,
    /// A fenced diff block for a pull-request comment
    Markdown,
}

/// `director diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The manifest as it is
    pub old: PathBuf,
    /// The manifest as it will be
    pub new: PathBuf,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Show secret values instead of <redacted>
    #[arg(long = "no-redact")]
    pub no_redact: bool,
    /// Output format
    #[arg(long = "format", value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
    /// Exit 2 when the manifests differ, 0 when they are equal (1 on error)
    #[arg(long = "exit-code")]
    pub exit_code: bool,
}

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// `director completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `director create-release`.
#[derive(Debug, Args)]
pub struct CreateReleaseArgs {
    /// The release directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Write the tarball here (default: dev_releases/NAME/NAME-VERSION.tgz, or releases/… when final)
    #[arg(long = "tarball", value_name = "PATH")]
    pub tarball: Option<PathBuf>,
    /// Create a final release (the next final version unless --version says)
    #[arg(long = "final")]
    pub final_release: bool,
    /// Use this version instead of counting up
    #[arg(long = "version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Create a final release even with uncommitted changes
    #[arg(long = "force")]
    pub force: bool,
    /// Release name (default: name in config/final.yml)
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

/// `director inspect-release`.
#[derive(Debug, Args)]
pub struct InspectReleaseArgs {
    /// A release tarball (.tgz) or a release directory
    pub release: PathBuf,
}

/// `director add-blob`.
#[derive(Debug, Args)]
pub struct AddBlobArgs {
    /// The file to add
    pub path: PathBuf,
    /// Its path under blobs/ (e.g. hello/hello-1.0.tar.gz)
    pub name: String,
    /// The release directory
    #[arg(long = "dir", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// `director blobs`.
#[derive(Debug, Args)]
pub struct BlobsArgs {
    /// The release directory
    #[arg(long = "dir", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}
