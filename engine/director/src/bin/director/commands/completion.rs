//! `director completion bash|zsh|fish`.

use clap::CommandFactory;
use clap_complete::Shell as Target;

use crate::cli::{Cli, CompletionArgs, Shell};
use crate::ui::Ui;

pub fn run(args: CompletionArgs, ui: &mut Ui) -> u8 {
    let target = match args.shell {
        Shell::Bash => Target::Bash,
        Shell::Zsh => Target::Zsh,
        Shell::Fish => Target::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(target, &mut Cli::command(), "director", &mut out);
    ui.data(&String::from_utf8_lossy(&out));
    0
}
