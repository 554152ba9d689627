//! `messaging-service`: reads settings, starts logging, runs the service until SIGTERM or
//! SIGINT. Exit codes: 0 after a graceful stop, 2 for a bad configuration, 1 when the
//! service cannot start (database unusable, address taken).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use slog::{error, info};

/// mimalloc rather than glibc's malloc: see its line in Cargo.toml (memory held after
/// large reads, and speed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod http;
mod keygen;
mod settings;
mod startup;
mod telemetry;

#[derive(Debug, Parser)]
#[command(name = "messaging-service", version, about)]
struct Cli {
    /// Settings file; else $MESSAGING_CONFIG, else ./settings.toml if present, else defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints a new random API key once, and the [auth.keys.NAME] lines that admit it.
    Keygen {
        /// The key's name, as logs will show it (letters, digits, '-', '_', '.').
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen { name }) = cli.command {
        return keygen::run(&name);
    }
    // Set but empty (a compose file's `${UNSET}`) is taken as not set.
    let env_path = std::env::var_os("MESSAGING_CONFIG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    let file = settings::config_path(cli.config, env_path);
    let settings = match settings::load(file.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("messaging-service: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let (log, guard) = telemetry::init(settings.log.level);
    let outcome = actix_web::rt::System::new().block_on(startup::run(settings, log.clone()));
    let code = match outcome {
        Ok(()) => {
            info!(log, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(log, "service failed"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    drop(log);
    // Flushes every line still queued for stdout before the process ends.
    drop(guard);
    code
}
