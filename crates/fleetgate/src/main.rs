//! fleetgate: serve many domains on a fleet of nodes with shared ACME certificates.
//!
//! `main` only wires: parse the command line, set up logging, load the config, run the command,
//! and turn errors into exit codes.

mod admin;
mod admin_config;
mod commands;
mod config;
mod deploy;
mod node_sites;
mod on_demand;
mod on_demand_config;
mod run;
mod sites_cli;
mod status;
mod store_open;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fleetgate",
    version,
    about = "Serve many domains over HTTP and HTTPS on a fleet of nodes, with certificates from ACME, files or a built-in CA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the configured sites and keep their certificates current.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration and print the sites, domains and certificate sources.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show every certificate: domains, source, issuer, expiry, state and last error.
    Certs {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Cluster health: nodes seen recently, store health, pending orders, locks held and by whom.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Registry sites, shared by the fleet: list, show, add, set, rm (through the store; no
    /// node needs to run).
    Sites {
        #[command(subcommand)]
        command: sites_cli::SitesCommand,
    },
    /// The built-in CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the built-in CA's root certificate (PEM), creating the CA if needed.
    Export {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::Check { config }
        | Command::Certs { config }
        | Command::Status { config } => config,
        Command::Ca {
            command: CaCommand::Export { config },
        } => config,
        Command::Sites { command } => command.config(),
    };
    let config = match config::Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Check { .. } => commands::check(&config),
        Command::Run { .. } => {
            if let Err(e) = run::init_tracing(&config.log) {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
            runtime().and_then(|rt| rt.block_on(run::run(config)))
        }
        Command::Certs { .. } => runtime().and_then(|rt| rt.block_on(commands::certs(&config))),
        Command::Status { .. } => runtime().and_then(|rt| rt.block_on(status::status(&config))),
        Command::Ca {
            command: CaCommand::Export { .. },
        } => runtime().and_then(|rt| rt.block_on(commands::ca_export(&config))),
        Command::Sites { command } => {
            runtime().and_then(|rt| rt.block_on(sites_cli::run(config, command)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
