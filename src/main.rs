use clap::Parser;

use pretext::cli::{Cli, Commands, EXIT_INPUT};

fn main() {
    let cli = Cli::parse();
    let code = match &cli.command {
        Some(Commands::Train(args)) => pretext::cli::train(args),
        None => {
            eprintln!(
                "pretext: the desktop app is not part of this build yet.\n\
                 Train from the command line instead, e.g.\n  \
                 pretext train --data builtin --task rotation --epochs 5\n\
                 (see `pretext train --help`)."
            );
            EXIT_INPUT
        }
    };
    std::process::exit(code);
}
