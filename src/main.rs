use clap::Parser;

use pretext::cli::{Cli, Commands, EXIT_INPUT};

fn main() {
    pretext::model::kernels::init();
    let cli = Cli::parse();
    let code = match &cli.command {
        Some(Commands::Train(args)) => pretext::cli::train(args),
        Some(Commands::Eval(args)) => pretext::cli::eval(args),
        Some(Commands::Bench(args)) => pretext::cli::bench(args),
        None => match pretext::ui::run(cli.path.clone()) {
            Ok(()) => 0,
            Err(e) => {
                pretext::cli::note(format_args!("error: {e:#}"));
                EXIT_INPUT
            }
        },
    };
    std::process::exit(code);
}
