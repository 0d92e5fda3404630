//! `phalanx`: the Phalanx node binary.
//!
//! - `phalanx node …` runs a node (Raft port, client port, WAL shards); see `--help`.
//! - `phalanx ctl --endpoints H:P[,H:P…] <command>` talks to nodes' client ports, like
//!   `etcdctl`: `status [--json]`, `put K V`, `get K`, `cas K EXPECTED NEW`, `delete K`,
//!   `append`, `transfer-leader`.
//!
//! Logs go to stderr through `tracing`; set `RUST_LOG` (default `info`).

mod ctl;
mod node;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc (why, and how `main` sets it up: `phalanx::runtime::allocator`).
#[global_allocator]
static GLOBAL: phalanx::runtime::allocator::MiMalloc = phalanx::runtime::allocator::MiMalloc;

/// Phalanx: a thread-per-core multi-Raft consensus engine.
#[derive(Parser, Debug)]
#[command(name = "phalanx", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    // Negative numbers are taken as values so the parser names the flag and the problem
    // ("invalid digit") instead of calling `-1` an unexpected argument.
    #[command(allow_negative_numbers = true)]
    Node(Box<node::NodeArgs>),
    /// Talk to running nodes through their client ports.
    #[command(allow_negative_numbers = true)]
    Ctl(Box<ctl::CtlArgs>),
}

/// Log filter when `RUST_LOG` is unset. glommio's reactor reports at error level that a
/// device does not support polled IO and falls back to interrupts; that is expected on
/// most disks, so it is not shown by default.
const DEFAULT_LOG_FILTER: &str = "info,glommio::reactor=off";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => {
            init_logging();
            if let Err(e) = phalanx::runtime::allocator::configure_for_many_partitions() {
                tracing::warn!("transparent huge pages stay on: {e}");
            }
            match node::run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("phalanx node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => ctl::run(*args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
