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

use crate::config::{self, Grants, Instances, ServiceSpec};
use crate::inspect;
use crate::server::{self, Runtime, ServeOptions};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Run socket services compiled to WebAssembly components, with the network gated."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a component: serve a `service` on the given listeners, or run a
    /// `program`'s main to completion. Or run every service of a manifest.
    Run(RunArgs),
    /// Show a component's world, imports and exports, and the grants it may need.
    Inspect {
        /// The component (.wasm) to look at.
        component: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The component (.wasm) to run.
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub component: Option<PathBuf>,
    /// Run the services of this manifest (portcullis.toml) instead.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
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
    /// `shared`: one instance serves every connection (module state shared);
    /// `per-connection`: a fresh instance per accepted connection (isolated).
    #[arg(long = "instances", value_enum, default_value_t = Instances::Shared)]
    pub instances: Instances,
    /// With `--instances per-connection`: how many instances may live at once
    /// (the most connections served at once; each slot reserves address space).
    #[arg(long = "max-instances", value_name = "N", default_value_t = crate::engine::POOLED_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// The most connections a service serves at once; further ones wait in the
    /// listen backlog until one closes. Default: no limit with shared instances,
    /// `--max-instances` with an instance per connection (so that a full pool
    /// makes connections wait instead of refusing them).
    #[arg(long = "max-connections", value_name = "N", conflicts_with = "manifest")]
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Let the guest open TCP connections to tcp://HOST:PORTS (repeatable). HOST:
    /// a name, *.suffix, an IP (`[v6]`), a CIDR or *; PORTS: a port, a range or *.
    #[arg(long = "allow-connect", value_name = "GRANT")]
    pub allow_connect: Vec<String>,
    /// Let the guest create its own listeners on tcp://HOST:PORTS (repeatable).
    #[arg(long = "allow-listen", value_name = "GRANT")]
    pub allow_listen: Vec<String>,
    /// Let the guest bind UDP sockets and exchange datagrams with udp://HOST:PORTS
    /// (repeatable).
    #[arg(long = "allow-udp", value_name = "GRANT")]
    pub allow_udp: Vec<String>,
    /// Also block private ranges and loopback for names and `*` grants.
    #[arg(long = "block-private")]
    pub block_private: bool,
    /// Do not use the on-disk cache of compiled components.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
}

impl RunArgs {
    /// The services to run: the manifest's, or the one the flags describe.
    fn specs(&self) -> Result<Vec<ServiceSpec>> {
        if let Some(manifest) = &self.manifest {
            return config::load_manifest(manifest);
        }
        let component = self.component.clone().context("give a COMPONENT or --manifest FILE")?;
        let spec = ServiceSpec {
            name: config::default_name(&component),
            component,
            listen: self.listen.clone(),
            env: self.env.clone(),
            read_timeout: Duration::from_millis(self.read_timeout_ms.max(1)),
            instances: self.instances,
            max_connections: self.max_connections,
            grants: Grants {
                connect: self.allow_connect.clone(),
                listen: self.allow_listen.clone(),
                udp: self.allow_udp.clone(),
                block_private: self.block_private,
            },
        };
        spec.grants.policy()?; // a bad grant stops the start-up
        Ok(vec![spec])
    }
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
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Inspect { component } => inspect::inspect(&component).map(|report| {
            print!("{report}");
            0
        }),
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
    let specs = args.specs()?;
    server::raise_open_file_limit();
    // Instances per connection come from a pool: instantiating one then costs
    // microseconds instead of mapping fresh memory each time.
    let mut runtime = if specs.iter().any(|s| s.instances == Instances::PerConnection) {
        Runtime::pooled(args.max_instances).with_context(|| {
            format!(
                "cannot reserve {} instance slots for --instances per-connection (is address space limited? \
                 try a smaller --max-instances)",
                args.max_instances
            )
        })?
    } else {
        Runtime::new()?
    };
    if args.no_cache {
        runtime = runtime.with_cache_dir(None);
    }
    // Load and bind everything before serving anything: an error stops the
    // start-up as a whole.
    let mut ready = Vec::new();
    for spec in &specs {
        let loaded = runtime.load(&spec.component, spec.env.clone(), spec.grants.policy()?)?;
        if !loaded.has_main() {
            loaded.require_callbacks()?;
            if spec.listen.is_empty() {
                bail!("{} is a service: give it at least one --listen ADDR:PORT", spec.name);
            }
        } else if !spec.listen.is_empty() {
            loaded.require_callbacks()?;
        }
        if spec.instances == Instances::PerConnection && loaded.has_main() {
            bail!("{} is a program (it exports wasi:cli/run): `--instances per-connection` is for services", spec.name);
        }
        let listeners = server::bind_all(&spec.listen)?;
        ready.push((spec, loaded, listeners));
    }
    // Signal handlers go in before `listening on` is printed: whoever waits for
    // that line may send SIGTERM at once.
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    for (spec, _, listeners) in &ready {
        for listener in listeners {
            let addr = listener.local_addr().context("reading the bound address")?;
            match args.manifest {
                Some(_) => println!("{}: listening on {addr}", spec.name),
                None => println!("listening on {addr}"),
            }
        }
    }
    use std::io::Write;
    std::io::stdout().flush().ok();

    let runs = ready.into_iter().map(|(spec, loaded, listeners)| {
        let max_connections = match spec.instances {
            Instances::Shared => spec.max_connections,
            Instances::PerConnection => {
                spec.max_connections.or(std::num::NonZeroUsize::new(args.max_instances as usize))
            }
        };
        let options = ServeOptions { read_timeout: spec.read_timeout, instances: spec.instances, max_connections };
        server::serve(loaded, listeners, options, shutdown.clone())
    });
    let codes = futures::future::join_all(runs).await;
    let mut exit = 0;
    for code in codes {
        let code = code?;
        if exit == 0 {
            exit = code;
        }
    }
    Ok(exit)
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

/// One thread by default: a service's instance is one future anyway, and on
/// one thread its callbacks, socket readiness and timers need no cross-thread
/// wake-ups (measured: about twice the echo throughput of tokio's multi-thread
/// runtime on the same core). `PORTCULLIS_WORKERS=N` (N > 1) spreads the
/// services of a manifest over N worker threads instead.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::env::var("PORTCULLIS_WORKERS").ok().and_then(|w| w.parse::<usize>().ok()) {
        Some(n) if n > 1 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    }
}
