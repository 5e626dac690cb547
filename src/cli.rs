//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// docker-worker: runs Taskcluster docker-worker tasks in Docker containers.
#[derive(Debug, Parser)]
#[command(name = "docker-worker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one task locally, with no queue: its log goes to the terminal, its artifacts to a directory.
    Run(RunArgs),
    /// Run the daemon: claim tasks from the Taskcluster Queue and run them until stopped.
    /// SIGTERM/SIGINT abort running tasks as worker-shutdown; SIGQUIT drains (finish them, then exit).
    Start(StartArgs),
    /// Check a task file's payload and print every problem, without running anything.
    Validate(ValidateArgs),
}

/// Where configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration profile from config/: local, test or production
    /// (default: local for `run`, production for `start`).
    #[arg(long, env = "DOCKER_WORKER_PROFILE")]
    pub profile: Option<String>,
    /// A TOML file layered over the profile.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. --set docker.pull_attempts=5 (repeatable; wins over everything).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML or JSON file: a docker-worker payload, or a whole task definition with a `payload`.
    pub file: PathBuf,
    /// Where artifacts and the task log are written, as <dir>/<artifact name>.
    #[arg(long, default_value = "artifacts", value_name = "DIR")]
    pub artifacts_dir: PathBuf,
    /// The task id (default: a new slugid).
    #[arg(long)]
    pub task_id: Option<String>,
    /// The run id.
    #[arg(long, default_value_t = 0)]
    pub run_id: u32,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A YAML or JSON file: a docker-worker payload, or a whole task definition with a `payload`.
    pub file: PathBuf,
}
