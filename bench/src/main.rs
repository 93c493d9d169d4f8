//! `portcullis-bench`: portcullis against a native tokio baseline, in one run.
//!
//! Every scenario runs against both servers over several rounds, native and
//! portcullis back to back in each (N P, P N, N P, ...), and reports the medians
//! of each side and the median of the per-round ratios (portcullis / native).
//! Servers run in their own processes pinned to core 0; this load generator is
//! pinned to core 1. Results: a Markdown table on stdout
//! and `target/bench/results.json`.
//!
//! Run it with `cargo xtask bench [--quick]`. `portcullis-bench ab` compares
//! two builds of portcullis instead (see [`ab`]).
//!
//! This file reads the command line and wires the parts together: the servers
//! ([`servers`]), the scenarios ([`scenarios`]) and their statistics
//! ([`stats`]), the report ([`report`]), the loads ([`load`]) and the native
//! baseline ([`native`]).

mod ab;
#[path = "../../xtask/src/layout.rs"]
mod layout;
mod load;
mod native;
mod report;
mod scenarios;
mod servers;
mod stats;
mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::scenarios::Settings;
use crate::servers::pin_to_core;

/// Portcullis against a native tokio baseline.
///
/// With no command: every scenario, portcullis against native, in alternating
/// rounds (what `cargo xtask bench` runs); a Markdown table on stdout and
/// target/bench/results.json.
#[derive(Parser)]
#[command(name = "portcullis-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    /// A short smoke run of every scenario (fewer, shorter rounds).
    #[arg(long)]
    quick: bool,
    #[command(subcommand)]
    command: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Two builds frozen by `cargo xtask snapshot`, side by side.
    Ab(ab::Args),
    /// The native baseline alone.
    NativeServer,
    /// The native HTTP baseline alone (hyper; prints `http ADDR`).
    HyperServer,
    /// The native proxy baseline alone (prints `tcp ADDR`).
    NativeProxy {
        /// Where every connection is piped, as IP:PORT.
        upstream: SocketAddr,
    },
    #[command(flatten)]
    LoadOnly(LoadOnly),
}

/// One load against a server started by hand, to profile that server.
#[derive(Subcommand)]
enum LoadOnly {
    /// One load against a server started by hand: closed-loop echo (prints msg/s).
    #[command(name = "echo-load")]
    Echo {
        /// The server, as IP:PORT.
        addr: SocketAddr,
        /// Bytes per message.
        #[arg(default_value = "64", value_parser = count)]
        size: usize,
        /// How long the load runs.
        #[arg(default_value_t = 5.0)]
        seconds: f64,
        /// Connections.
        #[arg(default_value = "50", value_parser = count)]
        conns: usize,
    },
    /// One load against a server started by hand: connect, 64 B round trip,
    /// close, 8 at a time (prints conn/s).
    #[command(name = "churn-load")]
    Churn {
        /// The server, as IP:PORT.
        addr: SocketAddr,
        /// How long the load runs.
        #[arg(default_value_t = 5.0)]
        seconds: f64,
    },
    /// One load against a server started by hand: echo at a fixed rate (prints
    /// p50, p99 and p99.9 in µs).
    #[command(name = "latency-load")]
    Latency {
        /// The server, as IP:PORT.
        addr: SocketAddr,
        /// Messages per second, over all connections.
        #[arg(default_value_t = 10_000.0)]
        rate: f64,
        /// How long the load runs.
        #[arg(default_value_t = 3.0)]
        seconds: f64,
        /// Connections.
        #[arg(default_value = "50", value_parser = count)]
        conns: usize,
    },
    /// One load against a server started by hand: UDP echo (prints dgram/s and
    /// how many went unanswered).
    #[command(name = "udp-load")]
    Udp {
        /// The server, as IP:PORT.
        addr: SocketAddr,
        /// How long the load runs.
        #[arg(default_value_t = 3.0)]
        seconds: f64,
        /// Clients.
        #[arg(default_value = "16", value_parser = count)]
        clients: usize,
    },
}

/// A count, read as any number and truncated (`64.0` is 64), as these
/// commands have always read them.
fn count(text: &str) -> Result<usize, std::num::ParseFloatError> {
    text.parse::<f64>().map(|n| n as usize)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => full_run(cli.quick),
        Some(Mode::Ab(args)) => ab::run(args),
        Some(Mode::NativeServer) => native::serve(),
        Some(Mode::HyperServer) => native::serve_http(),
        Some(Mode::NativeProxy { upstream }) => native::serve_proxy(upstream),
        Some(Mode::LoadOnly(kind)) => load_only(kind),
    }
}

/// Every scenario, portcullis against native: the table, the JSON, and an
/// error if a row measured nothing.
fn full_run(quick: bool) -> Result<()> {
    let settings = if quick { Settings::QUICK } else { Settings::FULL };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    // 5,000 idle connections need more descriptors than the usual soft limit.
    portcullis::server::raise_open_file_limit();
    pin_to_core(1);
    let root = layout::root_from(env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let probe_at_start = portcullis_bench::memory_latency_ns();
    let (rows, probe_in_instantiation) = runtime.block_on(scenarios::run_all(&root, &settings))?;
    let probes = [probe_at_start, probe_in_instantiation, portcullis_bench::memory_latency_ns()];

    report::print_table(&rows, quick, cores, probes);
    report::write_json(&root, &rows)?;
    report::check_measured(&rows)
}

/// `portcullis-bench echo-load ADDR [SIZE] [SECONDS] [CONNS]`, `churn-load ADDR
/// [SECONDS]`, `latency-load ADDR [RATE] [SECONDS] [CONNS]` or `udp-load ADDR
/// [SECONDS] [CLIENTS]`: one load against a server started by hand, to profile
/// that server.
fn load_only(kind: LoadOnly) -> Result<()> {
    pin_to_core(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match kind {
        LoadOnly::Echo { addr, size, seconds, conns } => {
            let rate = runtime.block_on(load::tcp_echo(addr, conns, size, Duration::from_secs_f64(seconds)));
            println!("{rate:.0} msg/s");
        }
        LoadOnly::Udp { addr, seconds, clients } => {
            let (rate, lost) = runtime.block_on(load::udp_echo(addr, clients, Duration::from_secs_f64(seconds)));
            println!("{rate:.0} dgram/s, {lost} unanswered");
        }
        LoadOnly::Latency { addr, rate, seconds, conns } => {
            let (p50, p99, p999) =
                runtime.block_on(load::fixed_rate(addr, conns, rate, Duration::from_secs_f64(seconds)));
            println!("p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs");
        }
        LoadOnly::Churn { addr, seconds } => {
            let rate = runtime.block_on(load::churn(addr, 8, Duration::from_secs_f64(seconds)));
            println!("{rate:.0} conn/s");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, LoadOnly, Mode};

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portcullis-bench").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_form_the_scripts_use_parses() {
        let full = parse("").unwrap();
        assert!(!full.quick && full.command.is_none());
        let quick = parse("--quick").unwrap();
        assert!(quick.quick && quick.command.is_none());
        assert!(matches!(parse("native-server").unwrap().command, Some(Mode::NativeServer)));
        assert!(matches!(parse("hyper-server").unwrap().command, Some(Mode::HyperServer)));
        assert!(matches!(parse("native-proxy 127.0.0.1:6379").unwrap().command, Some(Mode::NativeProxy { .. })));
        for line in [
            "ab a b echo-64",
            "ab a b churn per-connection 12 2",
            "ab a b echo-16k shared 10 0.5",
            "churn-load 127.0.0.1:1",
            "churn-load 127.0.0.1:1 3",
            "latency-load 127.0.0.1:1 5000 3 50",
            "udp-load 127.0.0.1:1 1 4",
        ] {
            parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let Some(Mode::LoadOnly(LoadOnly::Echo { size, seconds, conns, .. })) =
            parse("echo-load 127.0.0.1:1").unwrap().command
        else {
            panic!("echo-load")
        };
        assert_eq!((size, seconds, conns), (64, 5.0, 50));
        let Some(Mode::LoadOnly(LoadOnly::Echo { size, seconds, conns, .. })) =
            parse("echo-load 127.0.0.1:1 16384.0 0.2 1").unwrap().command
        else {
            panic!("echo-load")
        };
        assert_eq!((size, seconds, conns), (16384, 0.2, 1));
    }

    #[test]
    fn what_it_never_accepted_is_refused() {
        for line in [
            "--quick native-server",
            "--slow",
            "ab a b",
            "ab a b echo-32",
            "ab a b churn sometimes",
            "echo-load",
            "echo-load localhost",
            "udp-load 127.0.0.1:1 x",
        ] {
            assert!(parse(line).is_err(), "{line} parsed");
        }
    }
}
