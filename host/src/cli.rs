//! The `portcullis` command line: flags in, a served component out.
//!
//! Every failure is one clear line on stderr and a non-zero exit; no backtraces
//! for an operator's mistake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::activation;
use crate::admin;
use crate::component::Backend;
use crate::config::{Instances, Listen, ServiceSpec, Transport};
use crate::inspect;
use crate::limits;
use crate::manifest;
use crate::oci;
use crate::reload;
use crate::server::{self, Runtime};
use crate::settings::ServiceSettings;
use crate::workers::Workers;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Run socket services compiled to WebAssembly components, with the network gated."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written on stderr: `text` for people, `json` (one
    /// object a line: timestamp, level, target, message, service,
    /// connection where known) for a log collector.
    #[arg(long = "log-format", value_name = "FORMAT", global = true, default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a component: serve a `service` on the given listeners, or run a
    /// `program`'s main to completion. Or run every service of a manifest.
    #[command(override_usage = "portcullis run <COMPONENT> [OPTIONS]\n       \
        portcullis run --manifest <FILE> [--memory-budget SIZE] [--max-instances N] [--workers N] [--admin ADDR:PORT] [--no-cache]")]
    Run(Box<RunArgs>),
    /// Publish a component in an OCI registry (the wasm artifact layout:
    /// config application/vnd.wasm.config.v0+json, one application/wasm
    /// layer); prints `pushed oci://...@sha256:...`.
    Push {
        /// The component (.wasm) to publish.
        file: PathBuf,
        /// Where: `oci://HOST/REPO:TAG`.
        reference: String,
        /// A registry (`HOST:PORT`) to speak plain HTTP to; loopback ones
        /// always are (repeatable).
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registry: Vec<String>,
        #[command(flatten)]
        auth: RegistryAuth,
    },
    /// Show a component's world, imports and exports, and the grants it may need.
    Inspect {
        /// The component (.wasm) to look at, or `oci://HOST/REPO:TAG` (pulled
        /// into the cache first, as `run --pull missing` does).
        component: PathBuf,
        #[command(flatten)]
        auth: RegistryAuth,
    },
    /// Make a service crate of your own in a new folder NAME: `cargo build
    /// --release` there makes the component `portcullis run` serves.
    New {
        /// The crate's name (and its folder's).
        name: String,
        /// A program (an `async fn main` with a client) instead of a service.
        #[arg(long)]
        program: bool,
        /// The portcullis SDK to depend on (the `guest-sdk` folder of a
        /// checkout); default: the one this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The service: its component and settings (each flag is also a
    /// manifest key: `settings::ServiceSettings`).
    #[command(flatten)]
    pub service: ServiceSettings,
    /// Run the services of this manifest (portcullis.toml) instead.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// With `--instances per-connection`: how many instances may live at once
    /// (the most connections served at once; each slot reserves address space).
    #[arg(long = "max-instances", value_name = "N", default_value_t = crate::engine::POOLED_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// The most memory all instances of the process may hold together
    /// [default: half the machine's physical memory].
    #[arg(long = "memory-budget", value_name = "SIZE", value_parser = limits::parse_memory_size)]
    pub memory_budget: Option<u64>,
    /// Do not use the on-disk cache of compiled components.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Worker threads, each with a runtime of its own: `per-connection` and
    /// `per-worker` services spread over all of them, a `shared` service runs
    /// on one [default: the CPUs this process may use; a manifest's
    /// `workers = N`].
    #[arg(long = "workers", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=crate::workers::MAX_WORKERS as i64))]
    pub workers: Option<u16>,
    /// Serve the admin endpoint here: `/metrics` (Prometheus), `/healthz`,
    /// `/readyz` [default: none; a manifest's `[admin] listen`].
    #[arg(long = "admin", value_name = "ADDR:PORT")]
    pub admin: Option<std::net::SocketAddr>,
    /// When an `oci://` component is pulled from its registry: `never`
    /// (the cache only), `missing` (when not pulled before), `always`.
    #[arg(long = "pull", value_enum, default_value_t = oci::PullPolicy::Missing)]
    pub pull: oci::PullPolicy,
    /// A registry (`HOST:PORT`) to speak plain HTTP to; loopback ones
    /// always are (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    #[command(flatten)]
    pub auth: RegistryAuth,
}

/// Where registry logins are read from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryAuth {
    /// Logins for private registries: a file as `docker login` or `podman
    /// login` writes it (`{"auths": {"HOST": {"auth": "..."}}}`), or a
    /// Kubernetes dockerconfigjson Secret's [default: none: anonymous]
    #[arg(long = "registry-auth", value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    pub registry_auth: Option<PathBuf>,
}

impl RegistryAuth {
    /// `registries` with the logins of the file, if one is given.
    fn apply(&self, registries: oci::Registries) -> Result<oci::Registries> {
        Ok(match &self.registry_auth {
            Some(file) => registries.with_logins(file.clone())?,
            None => registries,
        })
    }
}

/// What `portcullis run` runs: the services and the process-wide settings.
struct Plan {
    specs: Vec<ServiceSpec>,
    workers: usize,
    admin: Option<std::net::SocketAddr>,
}

impl RunArgs {
    /// The services to run (the manifest's, or the one the flags describe),
    /// how many workers, and where the admin endpoint listens.
    fn plan(&self) -> Result<Plan> {
        let (specs, workers, admin) = match &self.manifest {
            Some(manifest) => {
                let file = manifest::load_manifest_file(manifest)?;
                (file.services, file.workers, file.admin)
            }
            None => {
                let spec = self.service.clone().into_spec(None).map_err(|e| anyhow::anyhow!(e.as_flag()))?;
                spec.grants.policy()?; // a bad grant stops the start-up
                (vec![spec], None, None)
            }
        };
        let workers = self.workers.map(usize::from).or(workers).unwrap_or_else(crate::workers::default_workers);
        Ok(Plan { specs, workers, admin: self.admin.or(admin) })
    }
}

/// Parses the arguments, runs, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // Before any thread starts: it takes the variables out of the environment.
    let passed = activation::Passed::from_env();
    init_logging(cli.log_format == "json");
    // The main thread only starts the services and waits for them: they run
    // on worker threads (`workers`), each with a current-thread runtime.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = match cli.command {
        Command::Run(args) => passed.and_then(|passed| runtime.block_on(run(*args, passed))),
        Command::Push { file, reference, insecure_registry, auth } => runtime.block_on(async {
            let registries =
                auth.apply(oci::Registries::new(oci::PullPolicy::Always, oci_cache()?, insecure_registry))?;
            let digest = registries.push(&file, &reference).await?;
            let parsed = oci::Reference::parse(&reference)?;
            let (registry, repository) = (parsed.registry(), parsed.repository());
            let tag = parsed.tag().unwrap_or("latest");
            println!("pushed oci://{registry}/{repository}@{digest} (tag {tag})");
            Ok(0)
        }),
        // A component in a registry is pulled into the cache (as `run`'s
        // default, `--pull missing`), then read there.
        Command::Inspect { component, auth } if oci::is_reference(&component) => runtime.block_on(async {
            let registries = auth.apply(oci::Registries::new(oci::PullPolicy::Missing, oci_cache()?, Vec::new()))?;
            let fetched = registries.fetch(&component.to_string_lossy()).await?;
            let report = inspect::inspect(&fetched.path)?;
            println!("{} is {}, in the cache as {}", component.display(), fetched.digest, fetched.path.display());
            print!("{report}");
            Ok(0)
        }),
        Command::Inspect { component, .. } => inspect::inspect(&component).map(|report| {
            print!("{report}");
            0
        }),
        Command::New { name, program, sdk } => {
            crate::scaffold::new_crate(&name, Path::new(&name), program, sdk.as_deref()).map(|next| {
                print!("{next}");
                0
            })
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            flush_logs();
            eprintln!("error: {e:#}");
            1
        }
    };
    flush_logs();
    code
}

/// What flushes the log writer's last lines when dropped.
static LOG_FLUSH: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = std::sync::Mutex::new(None);

/// Logs go to stderr through a writer thread of their own: a closed stderr
/// or a full pipe then drops log lines (tracing-appender's lossy mode)
/// instead of stalling serving or signal handling. Colours only on a
/// terminal; `json`: tracing-subscriber's JSON lines, fields at the top level.
fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rustls logs each bad handshake in its own words (a client's 60 KB
    // name, whole): a client could flood the log past the coalescing. The
    // host's own coalesced line reports them. `RUST_LOG=rustls=...` still
    // turns them on.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("rustls")) {
        filter = filter.add_directive("rustls=off".parse().expect("a directive"));
    }
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        crate::guest_output::json_stderr();
        logs.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    *LOG_FLUSH.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
}

/// Writes the guest output and log lines still queued, waiting at most a
/// moment for each: a stalled stdout or stderr must not hold up an exit.
fn flush_logs() {
    crate::guest_output::flush(Duration::from_millis(200));
    let Some(guard) = LOG_FLUSH.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let flushing = std::thread::spawn(move || drop(guard));
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while !flushing.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Exits at once with `code`, after a moment for the last log lines.
fn exit_now(code: i32) -> ! {
    flush_logs();
    std::process::exit(code)
}

/// Where pulled components are kept: beside the compiled ones.
fn oci_cache() -> Result<PathBuf> {
    crate::engine::default_cache_dir().context("no cache folder for pulled components: set PORTCULLIS_CACHE_DIR")
}

async fn run(args: RunArgs, mut passed: activation::Passed) -> Result<i32> {
    // The signals are ours before anything slow (a pull, a compile): SIGHUP's
    // default would end the process (one that comes while starting reloads
    // once started), and SIGTERM must stop a pull cleanly.
    let hangups = reload::hangups()?;
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    let Plan { mut specs, workers, admin } = args.plan()?;
    // Components in a registry are pulled (or found in the cache) first;
    // a reload pulls under the same flags.
    let pulls = specs.iter().any(|spec| oci::is_reference(&spec.component));
    let registries = match oci_cache() {
        Ok(cache) => {
            let registries = oci::Registries::new(args.pull, cache, args.insecure_registry.clone());
            // Logins that cannot be read matter only when something is pulled.
            match args.auth.apply(registries.clone()) {
                Ok(with_logins) => Some(with_logins),
                Err(e) if !pulls => {
                    tracing::warn!("registry logins not read (nothing is pulled): {e:#}");
                    Some(registries)
                }
                Err(e) => return Err(e),
            }
        }
        Err(_) => None,
    };
    if pulls {
        let registries =
            registries.as_ref().context("no cache folder for pulled components: set PORTCULLIS_CACHE_DIR")?;
        tokio::select! {
            resolved = registries.resolve(&mut specs) => resolved?,
            // Dropping the pull removes its partial files.
            () = shutdown.cancelled() => bail!("stopped while pulling components"),
        }
        for spec in &specs {
            if let Some(pulled) = &spec.pulled {
                tracing::info!(service = %spec.name, "runs {pulled}");
            }
        }
    }
    server::raise_open_file_limit();
    // Instances per connection come from a pool: instantiating one then costs
    // microseconds instead of mapping fresh memory each time. Each slot has
    // room for the largest `--max-memory` among those services; each worker
    // makes one ahead per such service, in slots of their own.
    let per_connection: Vec<&ServiceSpec> = specs.iter().filter(|s| s.instances == Instances::PerConnection).collect();
    let pooled_memory = per_connection.iter().map(|s| s.limits.max_memory).max();
    let spare_slots = u32::try_from(per_connection.len() * workers).unwrap_or(u32::MAX);
    let mut runtime = match pooled_memory {
        Some(max_memory) => Runtime::pooled(args.max_instances, spare_slots, max_memory).with_context(|| {
            format!(
                "cannot reserve {} instance slots of {} MiB for --instances per-connection (is address space \
                 limited? try a smaller --max-instances or --max-memory)",
                args.max_instances,
                max_memory >> 20
            )
        })?,
        None => Runtime::new()?,
    };
    if args.no_cache {
        runtime = runtime.with_cache_dir(None);
    }
    if let Some(budget) = args.memory_budget {
        runtime = runtime.with_memory_budget(budget);
    }
    // Load and bind everything before serving anything: an error stops the
    // start-up as a whole. A service spread over the workers gets one set of
    // listeners per worker (the kernel spreads the connections); any other
    // runs on one worker, the next in turn.
    let mut ready = Vec::new();
    let mut next_worker = 0;
    for spec in &specs {
        let loaded = runtime.load(spec)?;
        let spread = matches!(spec.instances, Instances::PerWorker | Instances::PerConnection)
            && loaded.backend() == Backend::Portcullis
            && !loaded.has_main();
        let listener_sets = match loaded.backend() {
            // It binds `--listen` itself (PORTCULLIS_LISTEN), under the policy,
            // and prints its own `listening on` lines.
            Backend::Wasi => vec![(next_worker, Vec::new())],
            Backend::Portcullis => {
                // Listeners the service manager passed (LISTEN_FDS) serve
                // instead of `listen`'s addresses.
                // A passed socket serves TLS when the service lists a
                // tls:// address with its port.
                let inherited: Vec<server::Listening> = passed
                    .take_for(&spec.name, !loaded.has_main())
                    .into_iter()
                    .map(|socket| {
                        let port = socket.local_addr().map(|a| a.port()).ok();
                        let tls =
                            spec.listen.iter().any(|l| l.transport == Transport::Tls && Some(l.addr.port()) == port);
                        let transport = if tls { Transport::Tls } else { Transport::Tcp };
                        server::Listening { socket, transport }
                    })
                    .collect();
                let tls_wanted = spec.listen.iter().any(|l| l.transport == Transport::Tls);
                if tls_wanted && !inherited.is_empty() && inherited.iter().all(|l| l.transport == Transport::Tcp) {
                    // A port typo must not serve plaintext where TLS was meant.
                    bail!(
                        "service `{}` lists tls:// addresses, but no socket the service manager passed has their \
                         port: a passed socket serves TLS when a tls:// listen address has its port",
                        spec.name
                    );
                }
                if !inherited.is_empty() {
                    loaded.require_callbacks()?;
                    if !spec.listen.is_empty() {
                        tracing::info!(
                            "service `{}`: serving the sockets the service manager passed (LISTEN_FDS), not its \
                             own listen addresses",
                            spec.name
                        );
                    }
                } else if !loaded.has_main() {
                    loaded.require_callbacks()?;
                    if spec.listen.is_empty() {
                        let hint = unclaimed(&passed);
                        match args.manifest {
                            Some(_) => {
                                bail!("service `{}` is a service: give it `listen = [\"ADDR:PORT\"]`{hint}", spec.name)
                            }
                            None => bail!("{} is a service: give it at least one --listen ADDR:PORT{hint}", spec.name),
                        }
                    }
                } else if !spec.listen.is_empty() {
                    loaded.require_callbacks()?;
                }
                let in_service = || format!("service `{}`{}", spec.name, unclaimed(&passed));
                match (inherited.is_empty(), spread) {
                    // Each worker accepts on a copy of the passed sockets.
                    (false, true) => (0..workers)
                        .map(|worker| {
                            let copies: std::io::Result<Vec<_>> =
                                inherited.iter().map(server::Listening::try_clone).collect();
                            copies.map(|set| (worker, set)).context("copying a passed socket for a worker")
                        })
                        .collect::<Result<_>>()?,
                    (false, false) => vec![(next_worker, inherited)],
                    (true, true) => server::bind_spread(&spec.listen, workers)
                        .with_context(in_service)?
                        .into_iter()
                        .enumerate()
                        .collect(),
                    (true, false) => vec![(next_worker, server::bind_all(&spec.listen).with_context(in_service)?)],
                }
            }
        };
        if !spread {
            next_worker += 1;
        }
        let running = reload::Running::new(spec, loaded.clone())?;
        ready.push((spec, loaded, listener_sets, running));
    }
    if let Some(left) = passed.left_over() {
        bail!(
            "LISTEN_FDS: no service took {left}: name each socket as its service (FileDescriptorName= in the \
             .socket unit), or pass one unnamed socket per service, in the manifest's order"
        );
    }
    let admin = match admin {
        Some(addr) => Some(admin::bind(addr)?),
        None => None,
    };
    let workers = Workers::start(workers)?;
    // What the workers and listeners hold is not the guests' to use.
    limits::fix_guest_socket_ceiling();
    // A closed stdout must not stop the start-up: the lines are a courtesy.
    use std::io::Write;
    let mut stdout = std::io::stdout();
    for (spec, _, sets, _) in &ready {
        // Every set holds the same addresses: the first tells them.
        for listener in sets.first().map(|(_, set)| set.as_slice()).unwrap_or_default() {
            let addr = listener.socket.local_addr().context("reading the bound address")?;
            let addr = Listen { addr, transport: listener.transport };
            let _ = match args.manifest {
                Some(_) => writeln!(stdout, "{}: listening on {addr}", spec.name),
                None => writeln!(stdout, "listening on {addr}"),
            };
        }
    }
    if let Some(listener) = admin {
        let addr = listener.local_addr().context("reading the admin endpoint's address")?;
        // Ready while each service that serves from a standing instance has one.
        let standing = ready
            .iter()
            .filter(|(spec, loaded, _, _)| {
                spec.instances != Instances::PerConnection || loaded.backend() == Backend::Wasi
            })
            .map(|(spec, loaded, _, _)| (spec.name.clone(), loaded.metrics().clone()))
            .collect();
        let endpoint = admin::Admin::new(runtime.metrics().clone(), standing, shutdown.clone());
        // It answers until the process exits: through a stop, `/readyz` says so.
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, endpoint, CancellationToken::new()).await {
                tracing::error!("{e:#}");
            }
        });
        let _ = writeln!(stdout, "admin: listening on {addr}");
    }
    let _ = stdout.flush();

    // A service of several that fails (a WASI service that could not listen,
    // a program that failed) stops the others: the process exits with its
    // status, so that a supervisor sees it, and the log names it.
    let several = ready.len() > 1;
    let mut running = Vec::new();
    let runs: Vec<_> = ready
        .into_iter()
        .map(|(spec, _loaded, sets, versions)| {
            let shutdown = shutdown.clone();
            let on_workers: Vec<_> = sets
                .into_iter()
                .map(|(worker, listeners)| {
                    workers.spawn(worker, server::serve_versions(versions.versions(), listeners, shutdown.clone()))
                })
                .collect();
            running.push(versions);
            (spec, on_workers)
        })
        .collect();
    // SIGHUP reloads what changed (see `reload`).
    let read_plan: reload::ReadPlan = {
        let (manifest, service) = (args.manifest.clone(), args.service.clone());
        Box::new(move || match &manifest {
            Some(manifest) => Ok(manifest::load_manifest_file(manifest)?.services),
            None => {
                let spec = service.clone().into_spec(None).map_err(|e| anyhow::anyhow!(e.as_flag()))?;
                Ok(vec![spec])
            }
        })
    };
    reload::Reloader::new(runtime.clone(), read_plan, running, registries).on(hangups);
    let runs = runs.into_iter().map(|(spec, on_workers)| {
        let shutdown = shutdown.clone();
        async move {
            // The service's status: its first worker's that failed, else 0.
            let mut result = Ok(0);
            for ended in futures::future::join_all(on_workers).await {
                let ended = ended.map_err(|e| anyhow::anyhow!("a worker stopped: {e}")).and_then(|r| r);
                if matches!(result, Ok(0)) {
                    result = ended;
                }
            }
            let failed = match &result {
                Ok(0) => None,
                Ok(code) => Some(format!("ended with status {code}")),
                Err(e) => Some(format!("failed: {e:#}")),
            };
            if let Some(failed) = failed.filter(|_| several && !shutdown.is_cancelled()) {
                tracing::error!("service `{}` {failed}; stopping the other services", spec.name);
                shutdown.cancel();
            }
            result
        }
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

/// For an error that a misnamed passed socket may explain: the sockets
/// the service manager passed that no service took yet, if any.
fn unclaimed(passed: &activation::Passed) -> String {
    match passed.left_over() {
        Some(left) => format!(
            " (the service manager passed sockets no service took: {left}; name each as its service, with \
             FileDescriptorName=)"
        ),
        None => String::new(),
    }
}

/// How long after SIGINT/SIGTERM the process is gone, whatever its guests
/// do: the grace period callbacks get, plus one second.
pub const STOP_DEADLINE: Duration = Duration::from_secs(crate::dispatch::STOP_GRACE.as_secs() + 1);

/// Cancels `shutdown` on SIGINT or SIGTERM, on a thread of its own, so that
/// no guest (spinning, blocked, parked in any call) and no stalled log write
/// can keep a stop from happening. If the stop has not finished within
/// [`STOP_DEADLINE`], or a second signal comes, the process exits at once
/// with status 1. The handlers are installed before this returns.
fn stop_on_signal(shutdown: CancellationToken) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if signals.next().is_none() {
                return;
            }
            // Logged before the stop begins: a stop that is over at once
            // (nothing to finish) must not exit before its line is queued.
            tracing::info!("stopping: no new connections, letting callbacks finish");
            shutdown.cancel();
            let deadline = std::thread::Builder::new().name("portcullis-stop-deadline".into()).spawn(|| {
                // Less the moment `exit_now` gives the log.
                std::thread::sleep(STOP_DEADLINE - Duration::from_millis(450));
                tracing::warn!("the stop did not finish within {STOP_DEADLINE:?} (a guest still held on); exiting now");
                exit_now(1);
            });
            if deadline.is_err() {
                // Without the deadline the stop may hang on a guest: end now.
                exit_now(1);
            }
            if signals.next().is_some() {
                tracing::warn!("second signal: exiting now");
                exit_now(1);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
