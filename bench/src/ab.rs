//! `portcullis-bench ab A B LOAD [MODE] [ROUNDS] [SECONDS]`: two builds of
//! portcullis against each other, for a change too small to see across full
//! bench runs on a machine whose speed swings within seconds.
//!
//! A and B are snapshots (`cargo xtask snapshot DIR`: a folder holding
//! `portcullis` and `echo.wasm`). Both servers run at once, pinned to core 0;
//! each round loads A then B, or B then A (alternating), and reports the rate
//! and the server's own CPU time per unit (message or connection), read from
//! `/proc`: the CPU time is what the change costs or saves even in a round
//! where the load generator, not the server, set the pace. The summary is the
//! median of the per-round ratios B / A.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::load;
use crate::servers::{Server, cpu_seconds, pin_to_core, portcullis_server};
use crate::stats::median;

/// `ab A B LOAD [MODE] [ROUNDS] [SECONDS]`.
#[derive(clap::Args)]
pub struct Args {
    /// Snapshot folder with `portcullis` and `echo.wasm` (cargo xtask snapshot DIR).
    a: PathBuf,
    /// Snapshot folder with `portcullis` and `echo.wasm` (cargo xtask snapshot DIR).
    b: PathBuf,
    /// What each round runs: echo-64 (50 connections, 64 B), echo-16k (50 connections, 16 KiB) or churn
    /// (connect, 64 B, close).
    #[arg(value_parser = ["echo-64", "echo-16k", "churn"])]
    load: String,
    /// `--instances` of both servers: one shared instance, or one per connection.
    #[arg(default_value = "shared", value_parser = ["shared", "per-connection"])]
    mode: String,
    /// Pairs of runs.
    #[arg(default_value_t = 10)]
    rounds: usize,
    /// Seconds per run.
    #[arg(default_value_t = 2.0)]
    seconds: f64,
}

/// One snapshot's server, named by its folder.
struct Side {
    name: String,
    server: Server,
}

/// The load each round puts on both servers.
#[derive(Clone, Copy)]
enum Load {
    /// 50 connections echoing messages of this many bytes.
    Echo(usize),
    /// Connect, one 64 B round trip, close; 8 at a time.
    Churn,
}

impl Load {
    fn parse(name: &str) -> Option<Load> {
        match name {
            "echo-64" => Some(Load::Echo(64)),
            "echo-16k" => Some(Load::Echo(16 * 1024)),
            "churn" => Some(Load::Churn),
            _ => None,
        }
    }

    /// What its rate counts.
    fn unit(self) -> &'static str {
        match self {
            Load::Echo(_) => "msg",
            Load::Churn => "conn",
        }
    }
}

/// What one run against one server measured.
struct Sample {
    /// Messages or connections per second.
    rate: f64,
    /// The server's CPU time per message or connection, in µs.
    cpu_us: f64,
}

pub fn run(args: Args) -> Result<()> {
    let Args { a, b, load: load_name, mode, rounds, seconds } = args;
    let mode = mode.as_str();
    let load = Load::parse(&load_name).context("clap lets only the loads Load::parse knows through")?;
    let run = Duration::from_secs_f64(seconds);
    let sides = [start(a, mode)?, start(b, mode)?];
    pin_to_core(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let unit = load.unit();
    println!("A = {}, B = {}; {load_name}, {mode}; {rounds} rounds of {seconds} s each", sides[0].name, sides[1].name);
    let (mut rate_ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first, so neither always runs in the other's wake.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut samples: [Option<Sample>; 2] = [None, None];
        for i in order {
            samples[i] = Some(runtime.block_on(measure(&sides[i].server, load, run))?);
        }
        let [Some(a), Some(b)] = samples else { unreachable!() };
        let (rate_ratio, cpu_ratio) = (b.rate / a.rate, b.cpu_us / a.cpu_us);
        println!(
            "round {:>2}: A {:>9.0} {unit}/s {:>7.1} µs CPU/{unit}   B {:>9.0} {unit}/s {:>7.1} µs CPU/{unit}   B/A rate {rate_ratio:.3}, CPU {cpu_ratio:.3}",
            round + 1,
            a.rate,
            a.cpu_us,
            b.rate,
            b.cpu_us
        );
        rate_ratios.push(rate_ratio);
        cpu_ratios.push(cpu_ratio);
    }
    let range = |v: &[f64]| {
        let low = v.iter().copied().fold(f64::INFINITY, f64::min);
        let high = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.3}–{high:.3}")
    };
    println!(
        "median B/A: rate {:.3} ({}), CPU per {unit} {:.3} ({}); above 1 for the rate and below 1 for CPU means B is faster",
        median(rate_ratios.clone()),
        range(&rate_ratios),
        median(cpu_ratios.clone()),
        range(&cpu_ratios)
    );
    Ok(())
}

fn start(dir: PathBuf, mode: &str) -> Result<Side> {
    let (bin, guest) = (dir.join("portcullis"), dir.join("echo.wasm"));
    for file in [&bin, &guest] {
        if !file.exists() {
            bail!("{} is missing: make snapshots with `cargo xtask snapshot DIR`", file.display());
        }
    }
    // Each snapshot compiles its guest into its own cache: a cache entry is
    // keyed on the engine's settings, which the two builds may not share.
    let server = portcullis_server(&bin, &guest, &dir.join("cache"), mode)?;
    Ok(Side { name: dir.display().to_string(), server })
}

async fn measure(server: &Server, load: Load, run: Duration) -> Result<Sample> {
    let addr = server.tcp.context("the server has no TCP address")?;
    let pid = server.child.id();
    let before = cpu_seconds(pid)?;
    let rate = match load {
        Load::Echo(size) => load::tcp_echo(addr, 50, size, run).await,
        Load::Churn => load::churn(addr, 8, run).await,
    };
    let spent = cpu_seconds(pid)? - before;
    let units = rate * run.as_secs_f64();
    Ok(Sample { rate, cpu_us: spent * 1e6 / units.max(1.0) })
}
