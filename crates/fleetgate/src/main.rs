//! fleetgate: serve many domains on a fleet of nodes with shared ACME certificates.
//!
//! `main` only wires: parse the command line, set up logging, load the config, run the command,
//! and turn errors into exit codes.

mod admin;
mod admin_config;
mod commands;
mod config;
mod config_dns;
mod deploy;
mod dns_commands;
mod dns_node;
mod manual;
mod node_sites;
mod on_demand;
mod on_demand_config;
mod run;
mod sites_cli;
mod status;
mod store_open;
mod systemd;
mod telemetry;
mod ticket_keys;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
        /// One JSON array of certificates (with the check's findings) instead of the table.
        #[arg(long, conflicts_with = "wide")]
        json: bool,
        /// Full domain lists and issuers, and every finding of the certificate check.
        #[arg(long)]
        wide: bool,
    },
    /// Cluster health: nodes up, stopped or gone, store health, certificates needing work,
    /// locks held and by whom.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON document instead of the tables.
        #[arg(long)]
        json: bool,
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
    /// Print a shell completion script (e.g. `fleetgate completions bash >
    /// /usr/share/bash-completion/completions/fleetgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `fleetgate manpage > /usr/local/share/man/man1/fleetgate.1`.
    Manpage,
    /// The delegated DNS-01 zone ([dns]).
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// The fleet's TLS session ticket keys (shared through the store).
    Tickets {
        #[command(subcommand)]
        command: TicketsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TicketsCommand {
    /// Rotate the keys now (a key may have leaked; the schedule is tls.ticket_key_rotation):
    /// tickets made before stay valid for one more period, every node swaps the keys in within
    /// seconds (no node needs to run).
    Rotate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Store NAME's delegation and print the CNAME its owner adds (no node needs to run).
    Delegate {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Resolve NAME's delegation through the system resolver and say what is missing or wrong.
    Check {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
        /// Ask this resolver (IP:PORT) instead of /etc/resolv.conf's first nameserver.
        #[arg(long)]
        resolver: Option<std::net::SocketAddr>,
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
        | Command::Certs { config, .. }
        | Command::Status { config, .. } => config,
        Command::Ca {
            command: CaCommand::Export { config },
        } => config,
        Command::Sites { command } => command.config(),
        // Need no config.
        Command::Completions { shell } => return manual::completions(*shell, Cli::command()),
        Command::Manpage => return manual::manpage(Cli::command()),
        Command::Dns {
            command: DnsCommand::Delegate { config, .. } | DnsCommand::Check { config, .. },
        } => config,
        Command::Tickets {
            command: TicketsCommand::Rotate { config },
        } => config,
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
        Command::Certs { json, wide, .. } => {
            let form = match (json, wide) {
                (true, _) => commands::CertsForm::Json,
                (false, true) => commands::CertsForm::Wide,
                (false, false) => commands::CertsForm::Table,
            };
            runtime().and_then(|rt| rt.block_on(commands::certs(&config, form)))
        }
        Command::Status { json, .. } => {
            runtime().and_then(|rt| rt.block_on(status::status(&config, json)))
        }
        Command::Ca {
            command: CaCommand::Export { .. },
        } => runtime().and_then(|rt| rt.block_on(commands::ca_export(&config))),
        Command::Sites { command } => {
            runtime().and_then(|rt| rt.block_on(sites_cli::run(config, command)))
        }
        Command::Dns { command } => runtime().and_then(|rt| {
            rt.block_on(async {
                match &command {
                    DnsCommand::Delegate { name, .. } => {
                        dns_commands::delegate(&config, name).await
                    }
                    DnsCommand::Check { name, resolver, .. } => {
                        dns_commands::check(&config, name, *resolver).await
                    }
                }
            })
        }),
        Command::Tickets {
            command: TicketsCommand::Rotate { .. },
        } => runtime().and_then(|rt| rt.block_on(commands::tickets_rotate(&config))),
        // Answered above, before the config was read.
        Command::Completions { .. } | Command::Manpage => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`fleetgate certs | head -1`): it has all it wanted.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Whether `e` is a write to a closed pipe (stdout whose reader exited), however wrapped.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// The blocking pool's size: two threads per core, at least 4 and at most 64. It runs the
/// directory store's file operations (short, and queued ones wait within the store's timeout)
/// and the built-in CA's signing. Tokio's default of 512 let a node loading 100,000 registry
/// certificates start 512 threads, and glibc gives busy threads arenas of their own: RSS 850
/// against 590 MB 20 s after start with 4 threads (scenario 11b, measured by hand).
fn blocking_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_mul(2)
        .clamp(4, 64)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()?)
}
