//! The `portcullis` command line: flags in, a served component out.
//!
//! Every failure is one clear line on stderr and a non-zero exit; no backtraces
//! for an operator's mistake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::server::{self, Runtime};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Run socket services compiled to WebAssembly components, with the network gated.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a component: serve a `service` on the given listeners, or run a
    /// `program`'s main to completion.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The component (.wasm) to run.
    pub component: PathBuf,
    /// Listen on ADDR:PORT and send its connections to the component's callbacks
    /// (repeatable; port 0 picks a free port).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// An environment variable for the guest (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Read time-out of accepted connections, in milliseconds.
    #[arg(long = "read-timeout-ms", value_name = "N", default_value_t = 300_000)]
    pub read_timeout_ms: u64,
    /// Do not use the on-disk cache of compiled components.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// Parses the arguments, runs, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run(args: RunArgs) -> Result<i32> {
    let mut runtime = Runtime::new()?;
    if args.no_cache {
        runtime = runtime.with_cache_dir(None);
    }
    let loaded = runtime.load(&args.component, args.env.clone())?;
    if !loaded.has_main() {
        loaded.require_callbacks()?;
        if args.listen.is_empty() {
            bail!("{} is a service: give it at least one --listen ADDR:PORT", loaded.name);
        }
    } else if !args.listen.is_empty() {
        loaded.require_callbacks()?;
    }
    let listeners = server::bind_all(&args.listen)?;
    // Signal handlers go in before `listening on` is printed: whoever waits for
    // that line may send SIGTERM at once.
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    for listener in &listeners {
        let addr = listener.local_addr().context("reading the bound address")?;
        println!("listening on {addr}");
    }
    use std::io::Write;
    std::io::stdout().flush().ok();

    server::serve(loaded, listeners, Duration::from_millis(args.read_timeout_ms.max(1)), shutdown).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM. The handlers are installed before
/// this returns.
fn stop_on_signal(shutdown: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: no new connections, letting callbacks finish");
        shutdown.cancel();
    });
    Ok(())
}
