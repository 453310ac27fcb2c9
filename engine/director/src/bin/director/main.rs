//! The `director` command line: parses flags, calls one engine function per verb, and
//! renders the result through the [`ui::Ui`] handle.
//!
//! Exit codes (a contract, documented in the README): 0 success or no changes, 1 error,
//! 2 changes present (`diff --exit-code`), 3 applied but some instances failed (later).

mod cli;
mod commands;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let mut ui = ui::Ui::new(&cli.global);
    let status = commands::run(cli, &mut ui);
    ExitCode::from(status)
}
