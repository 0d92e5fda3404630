//! `phalanx-bench`: the bundled load generator.
//!
//! With no flags it runs the quick start's main job: an embedded 3-node cluster in this
//! process, real TCP on loopback, the native WAL with fsync on every replica, 64 partitions,
//! 256 closed-loop clients writing 256-byte entries for 10 s — and prints throughput and
//! latency. `phalanx-bench --help` lists every knob; `bench/README.md` documents every
//! figure and how the published numbers were measured.
//!
//! Exit status: 0 on success, 1 on an error or a failed verdict (an etcd profile's FAIL, a
//! failover that did not recover; not enforced with `--smoke`), 2 on unparsable flags.

mod cleanup;
mod cli;
mod cluster;
mod driver;
mod engine_timeline;
mod isolate;
mod keys;
mod load;
mod plot;
mod probes;
mod proc_stats;
mod profiles;
mod remote;
mod report;
mod scenarios;
mod storage;
mod target;

use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

use cli::{Args, Command, Settings};
use profiles::Profile;

/// mimalloc, as the node binary (why, and how `main` sets it up: `phalanx::runtime::allocator`).
#[global_allocator]
static GLOBAL: phalanx::runtime::allocator::MiMalloc = phalanx::runtime::allocator::MiMalloc;

/// Log filter when `RUST_LOG` is unset. glommio's reactor reports at error level that a
/// device does not support polled IO and falls back to interrupts; that is expected on
/// most disks, so it is not shown by default.
const DEFAULT_LOG_FILTER: &str = "warn,glommio::reactor=off";

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = phalanx::runtime::allocator::configure_for_many_partitions() {
        tracing::warn!("transparent huge pages stay on: {e}");
    }
    let args = Args::parse();
    if let Some(Command::Storage(s)) = args.command {
        return ExitCode::from(storage::run(s));
    }
    cleanup::install();
    match Settings::from_args(&args).and_then(|s| run(&s)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("phalanx-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs, prints, writes the files; `Ok(false)` when a verdict failed.
fn run(s: &Settings) -> Result<bool, String> {
    let reports = scenarios::run(s)?;
    let sweep = s.profile == Profile::Openraft;
    if !sweep {
        for r in &reports {
            print!("{}", r.table());
        }
    }
    let headline = if sweep {
        let (c, b) = profiles::OPENRAFT_HEADLINE;
        reports.iter().find(|r| r.meta.clients == c && r.meta.batch == b).or(reports.first())
    } else {
        reports.first()
    };
    if let Some(path) = &s.json {
        let mut v = headline.map_or(Value::Null, report::Report::to_json);
        if sweep && let Some(obj) = v.as_object_mut() {
            obj.insert("rows".into(), Value::Array(reports.iter().map(report::Report::to_json).collect()));
        }
        report::write_json(path, &v)?;
    }
    if let (Some(path), Some(r)) = (&s.plot, headline)
        && let Some(l) = &r.load
    {
        let title = r.header();
        plot::write(path, &plot::timeline(title.trim(), &l.per_second))?;
    }
    let passed = reports.iter().all(|r| r.pass != Some(false));
    if !passed && s.smoke {
        // A smoke run proves every path works; seconds of load on a shared CI machine are no
        // verdict on performance.
        eprintln!("phalanx-bench: smoke run: the verdict above is not enforced");
        return Ok(true);
    }
    Ok(passed)
}
