//! The `turku-storage` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use turku_storage::cli::{exit_code, init_logging, limit_allocator_arenas, run, Cli};

fn main() -> ExitCode {
    limit_allocator_arenas();
    let cli = Cli::parse();
    init_logging(&cli);
    exit_code(run(cli))
}
