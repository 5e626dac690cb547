//! The `docker-worker` binary: parse, load configuration, build the actor system, wait.
#![forbid(unsafe_code)]

mod cli;
mod daemon;
mod exit;
mod logging;
mod run;
mod settings;
mod taskfile;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Start(args) => daemon::main(args),
        cli::Command::Validate(args) => taskfile::validate_main(&args.file),
    }
}
