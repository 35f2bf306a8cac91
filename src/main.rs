use clap::Parser;

use pretext::cli::{Cli, EXIT_INPUT};

fn main() {
    pretext::model::kernels::init();
    let cli = Cli::parse();
    let code = match &cli.command {
        Some(command) => pretext::cli::run(command),
        None => match pretext::ui::run(cli.launch()) {
            Ok(()) => 0,
            Err(e) => {
                pretext::cli::note(format_args!("error: {}", pretext::cli::error_chain(&e)));
                EXIT_INPUT
            }
        },
    };
    std::process::exit(code);
}
