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

mod ab;
mod load;
mod native;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One line of `results.json`.
#[derive(Serialize, Clone)]
struct Row {
    scenario: String,
    mode: String,
    metric: String,
    portcullis: f64,
    native: Option<f64>,
    ratio: Option<f64>,
    /// The lowest and highest of the per-round ratios the median comes from:
    /// how much the machine moved during the scenario.
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
}

const USAGE: &str = "\
usage: portcullis-bench [--quick]      every scenario, portcullis against native (cargo xtask bench)
       portcullis-bench ab A B LOAD [MODE] [ROUNDS] [SECONDS]
                                       two builds frozen by `cargo xtask snapshot`, side by side
       portcullis-bench native-server  the native baseline alone
       portcullis-bench echo-load ADDR [SIZE] [SECONDS] [CONNS] | churn-load ADDR [SECONDS]
                      | latency-load ADDR [RATE] [SECONDS] [CONNS] | udp-load ADDR [SECONDS] [CLIENTS]
                                       one load against a server started by hand";

struct Settings {
    rounds: usize,
    /// Processes the instantiation loop runs in (see [`instantiation`]).
    instantiation_processes: usize,
    run: Duration,
    latency_run: Duration,
    idle_conns: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("native-server") {
        return native::serve();
    }
    if args.first().map(String::as_str) == Some("ab") {
        return ab::run(&args[1..]);
    }
    if let Some(kind @ ("echo-load" | "churn-load" | "latency-load" | "udp-load")) = args.first().map(String::as_str) {
        return load_only(kind, &args[1..]);
    }
    let quick = match args.first().map(String::as_str) {
        None => false,
        Some("--quick") if args.len() == 1 => true,
        Some(_) => {
            // Anything else (`--help` included) gets the usage, not a
            // ten-minute run.
            eprintln!("{USAGE}");
            return if matches!(args[0].as_str(), "--help" | "-h" | "help") {
                Ok(())
            } else {
                bail!("unknown arguments: {}", args.join(" "))
            };
        }
    };
    let settings = if quick {
        Settings {
            rounds: 5,
            instantiation_processes: 3,
            run: Duration::from_millis(400),
            latency_run: Duration::from_millis(800),
            idle_conns: 1000,
        }
    } else {
        Settings {
            rounds: 10,
            instantiation_processes: 7,
            run: Duration::from_secs(1),
            latency_run: Duration::from_secs(3),
            idle_conns: 5000,
        }
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    // 5,000 idle connections need more descriptors than the usual soft limit.
    portcullis::server::raise_open_file_limit();
    pin_to_core(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let probe_at_start = portcullis_bench::memory_latency_ns();
    let (rows, probe_in_instantiation) = runtime.block_on(run_all(&root, &settings))?;
    let probes = [probe_at_start, probe_in_instantiation, portcullis_bench::memory_latency_ns()];

    print_table(&rows, quick, cores, probes);
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&rows)?)?;
    println!("\nwrote {}", out.join("results.json").display());
    check_measured(&rows)
}

/// Every scenario must have measured something: a rate or time of 0, or not a
/// number, means a server answered nothing or a load went wrong. (Memory
/// growth and differences from native need only be numbers.) `cargo xtask
/// test` runs `--quick` and relies on this, asserting no speed, only that
/// every scenario completed.
fn check_measured(rows: &[Row]) -> Result<()> {
    let measured = |metric: &str, value: f64| {
        value.is_finite() && (metric.contains("above native") || metric.starts_with("bytes/") || value > 0.0)
    };
    let broken: Vec<String> = rows
        .iter()
        .filter(|r| !measured(&r.metric, r.portcullis) || r.native.is_some_and(|n| !measured(&r.metric, n)))
        .map(|r| format!("{} ({}, {})", r.scenario, r.mode, r.metric))
        .collect();
    if !broken.is_empty() {
        bail!("these rows measured nothing: {}", broken.join("; "));
    }
    Ok(())
}

/// `portcullis-bench echo-load ADDR [SIZE] [SECONDS] [CONNS]` or `churn-load ADDR
/// [SECONDS]`: one load against a server started by hand, to profile that server.
fn load_only(kind: &str, args: &[String]) -> Result<()> {
    let addr: SocketAddr =
        args.first()
            .context("usage: echo-load ADDR [SIZE] [SECONDS] [CONNS] | churn-load ADDR [SECONDS] | latency-load ADDR [RATE] [SECONDS] [CONNS] | udp-load ADDR [SECONDS] [CLIENTS]")?
            .parse()?;
    let number =
        |i: usize, default: f64| args.get(i).map(|s| s.parse::<f64>()).transpose().map(|n| n.unwrap_or(default));
    pin_to_core(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if kind == "echo-load" {
        let (size, seconds, conns) = (number(1, 64.0)? as usize, number(2, 5.0)?, number(3, 50.0)? as usize);
        let rate = runtime.block_on(load::tcp_echo(addr, conns, size, Duration::from_secs_f64(seconds)));
        println!("{rate:.0} msg/s");
    } else if kind == "udp-load" {
        let (seconds, clients) = (number(1, 3.0)?, number(2, 16.0)? as usize);
        let (rate, lost) = runtime.block_on(load::udp_echo(addr, clients, Duration::from_secs_f64(seconds)));
        println!("{rate:.0} dgram/s, {lost} unanswered");
    } else if kind == "latency-load" {
        let (rate, seconds, conns) = (number(1, 10_000.0)?, number(2, 3.0)?, number(3, 50.0)? as usize);
        let (p50, p99, p999) = runtime.block_on(load::fixed_rate(addr, conns, rate, Duration::from_secs_f64(seconds)));
        println!("p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs");
    } else {
        let rate = runtime.block_on(load::churn(addr, 8, Duration::from_secs_f64(number(1, 5.0)?)));
        println!("{rate:.0} conn/s");
    }
    Ok(())
}

/// A server under test, in its own process; killed when dropped.
struct Server {
    child: Child,
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c 0 PROGRAM ARGS` where taskset exists, else the program alone.
fn on_core_0(program: &Path, args: &[&str]) -> Command {
    if Path::new("/usr/bin/taskset").exists() {
        let mut cmd = Command::new("/usr/bin/taskset");
        cmd.arg("-c").arg("0").arg(program).args(args);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

fn spawn(mut cmd: Command) -> Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting a server")?;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    Ok((child, stdout))
}

fn line(reader: &mut BufReader<std::process::ChildStdout>) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("the server exited before announcing its address");
    }
    Ok(line.trim().to_string())
}

fn native_server() -> Result<Server> {
    let exe = std::env::current_exe()?;
    let (child, mut out) = spawn(on_core_0(&exe, &["native-server"]))?;
    let tcp = line(&mut out)?.strip_prefix("tcp ").context("tcp line")?.parse()?;
    let udp = line(&mut out)?.strip_prefix("udp ").context("udp line")?.parse()?;
    Ok(Server { child, tcp: Some(tcp), udp: Some(udp) })
}

fn portcullis_bin(root: &Path) -> PathBuf {
    root.join("target/release/portcullis")
}

fn guest(root: &Path, name: &str) -> String {
    root.join("target/wasm32-wasip2/guest").join(format!("{name}.wasm")).display().to_string()
}

/// `portcullis run echo` with `--instances MODE` (`shared` or `per-connection`).
fn portcullis_tcp(root: &Path, cache: &Path, mode: &str) -> Result<Server> {
    portcullis_server(&portcullis_bin(root), Path::new(&guest(root, "echo")), cache, mode)
}

/// `BIN run GUEST` on an ephemeral loopback port, with `--instances MODE`.
fn portcullis_server(bin: &Path, guest: &Path, cache: &Path, mode: &str) -> Result<Server> {
    let guest = guest.display().to_string();
    let mut cmd = on_core_0(bin, &["run", &guest, "--listen", "127.0.0.1:0", "--instances", mode]);
    cmd.env("PORTCULLIS_CACHE_DIR", cache);
    let (child, mut out) = spawn(cmd)?;
    let addr = line(&mut out)?.strip_prefix("listening on ").context("listening line")?.parse()?;
    Ok(Server { child, tcp: Some(addr), udp: None })
}

fn portcullis_udp(root: &Path, cache: &Path) -> Result<Server> {
    let mut cmd = on_core_0(
        &portcullis_bin(root),
        &["run", &guest(root, "udp_echo"), "--env", "PORT=0", "--allow-udp", "udp://*:*"],
    );
    cmd.env("PORTCULLIS_CACHE_DIR", cache);
    let (child, mut out) = spawn(cmd)?;
    let announced = line(&mut out)?;
    let port: u16 = announced.rsplit_once(':').context("udp-echo line")?.1.parse()?;
    Ok(Server { child, tcp: None, udp: Some(SocketAddr::from(([127, 0, 0, 1], port))) })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

fn row(scenario: &str, mode: &str, metric: &str, portcullis: f64, native: Option<f64>) -> Row {
    Row {
        scenario: scenario.into(),
        mode: mode.into(),
        metric: metric.into(),
        portcullis,
        native,
        ratio: native.filter(|n| *n != 0.0).map(|n| portcullis / n),
        ratio_min: None,
        ratio_max: None,
    }
}

/// What [`alternate`] found for each value a measurement yields: the medians
/// of native's and portcullis's rounds, and the medians of the per-round
/// ratios and differences.
struct Paired {
    native: Vec<f64>,
    ours: Vec<f64>,
    /// `None` when native measured 0 in every round.
    ratio: Vec<Option<f64>>,
    /// The lowest and highest per-round ratio.
    ratio_range: Vec<Option<(f64, f64)>>,
    difference: Vec<f64>,
}

impl Paired {
    /// The table row of value `i`.
    fn row(&self, scenario: &str, mode: &str, metric: &str, i: usize) -> Row {
        self.scaled_row(scenario, mode, metric, i, 1.0)
    }

    /// How far above native value `i` is (for targets stated as a difference).
    fn difference_row(&self, scenario: &str, mode: &str, metric: &str, i: usize) -> Row {
        row(scenario, mode, metric, self.difference[i], None)
    }

    /// The row of value `i` in another unit (`scale` times it; same ratio).
    fn scaled_row(&self, scenario: &str, mode: &str, metric: &str, i: usize, scale: f64) -> Row {
        Row {
            scenario: scenario.into(),
            mode: mode.into(),
            metric: metric.into(),
            portcullis: self.ours[i] * scale,
            native: Some(self.native[i] * scale),
            ratio: self.ratio[i],
            ratio_min: self.ratio_range[i].map(|(low, _)| low),
            ratio_max: self.ratio_range[i].map(|(_, high)| high),
        }
    }
}

/// Runs `measure` against native and portcullis `rounds` times each, in pairs
/// that alternate which goes first (N P, P N, N P, ...).
///
/// The ratio is the median of each pair's ratio, not the ratio of the two
/// medians: this machine's speed swings by up to 1.8x within seconds (a CPU
/// loop on one core takes 275-515 ms from one second to the next), and the two
/// halves of a pair run back to back, so they mostly see the same speed.
async fn alternate<F, Fut>(rounds: usize, native: SocketAddr, ours: SocketAddr, mut measure: F) -> Paired
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Vec<f64>>,
{
    let (mut a, mut b): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            a.push(measure(native).await);
            b.push(measure(ours).await);
        } else {
            b.push(measure(ours).await);
            a.push(measure(native).await);
        }
    }
    let values = a[0].len();
    let medians =
        |runs: &[Vec<f64>]| -> Vec<f64> { (0..values).map(|i| median(runs.iter().map(|r| r[i]).collect())).collect() };
    let per_round: Vec<Vec<f64>> = (0..values)
        .map(|i| a.iter().zip(&b).filter(|(n, _)| n[i] != 0.0).map(|(n, p)| p[i] / n[i]).collect())
        .collect();
    let ratio = per_round.iter().map(|ratios| (!ratios.is_empty()).then(|| median(ratios.clone()))).collect();
    let ratio_range = per_round
        .iter()
        .map(|ratios| {
            let low = ratios.iter().copied().reduce(f64::min)?;
            let high = ratios.iter().copied().reduce(f64::max)?;
            Some((low, high))
        })
        .collect();
    let difference = (0..values).map(|i| median(a.iter().zip(&b).map(|(n, p)| p[i] - n[i]).collect())).collect();
    Paired { native: medians(&a), ours: medians(&b), ratio, ratio_range, difference }
}

/// Every scenario; with the rows, the memory probe's median reading during
/// the instantiation processes.
async fn run_all(root: &Path, s: &Settings) -> Result<(Vec<Row>, f64)> {
    let cache = root.join("target/bench/cache");
    std::fs::create_dir_all(&cache)?;
    let mut rows = Vec::new();
    let native = native_server()?;
    let ours = portcullis_tcp(root, &cache, "shared")?;
    let ours_per_conn = portcullis_tcp(root, &cache, "per-connection")?;
    let (n_tcp, p_tcp) = (native.tcp.unwrap(), ours.tcp.unwrap());

    for (size, label) in [(64usize, "64 B"), (16 * 1024, "16 KiB")] {
        eprintln!("bench: tcp echo {label}");
        let run = s.run;
        let paired =
            alternate(s.rounds, n_tcp, p_tcp, |addr| async move { vec![load::tcp_echo(addr, 50, size, run).await] })
                .await;
        let scenario = format!("tcp echo {label}, 50 conns");
        rows.push(paired.row(&scenario, "shared", "msg/s", 0));
        rows.push(paired.scaled_row(&scenario, "shared", "MB/s", 0, size as f64 / 1e6));
    }

    eprintln!("bench: tcp echo 64 B, an instance per connection");
    let run = s.run;
    let paired = alternate(s.rounds, n_tcp, ours_per_conn.tcp.unwrap(), |addr| async move {
        vec![load::tcp_echo(addr, 50, 64, run).await]
    })
    .await;
    rows.push(paired.row("tcp echo 64 B, 50 conns", "per-connection", "msg/s", 0));

    eprintln!("bench: connection churn");
    for (mode, server) in [("shared", p_tcp), ("per-connection", ours_per_conn.tcp.unwrap())] {
        let paired =
            alternate(s.rounds, n_tcp, server, |addr| async move { vec![load::churn(addr, 8, run).await] }).await;
        rows.push(paired.row("connection churn, 64 B round trip", mode, "conn/s", 0));
    }

    eprintln!("bench: fixed-rate latency");
    let run = s.latency_run;
    let paired = alternate(s.rounds, n_tcp, p_tcp, |addr| async move {
        let (p50, p99, p999) = load::fixed_rate(addr, 50, 10_000.0, run).await;
        vec![p50, p99, p999]
    })
    .await;
    for (i, metric) in ["p50 µs", "p99 µs", "p99.9 µs"].iter().enumerate() {
        rows.push(paired.row("fixed rate 10k msg/s, 50 conns", "shared", metric, i));
    }
    rows.push(paired.difference_row("fixed rate 10k msg/s, 50 conns", "shared", "p99 µs above native", 1));

    eprintln!("bench: idle memory");
    // Fresh servers each round: what a previous round allocated (and the
    // allocator kept) must not count.
    drop(ours);
    drop(ours_per_conn);
    let conns = s.idle_conns;
    let mut samples = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.rounds.min(3) {
        let fresh_native = native_server()?;
        samples.0.push(load::idle_memory(fresh_native.tcp.unwrap(), fresh_native.child.id(), conns).await);
        drop(fresh_native);
        let fresh_ours = portcullis_tcp(root, &cache, "shared")?;
        samples.1.push(load::idle_memory(fresh_ours.tcp.unwrap(), fresh_ours.child.id(), conns).await);
        drop(fresh_ours);
        let fresh_ours = portcullis_tcp(root, &cache, "per-connection")?;
        samples.2.push(load::idle_memory(fresh_ours.tcp.unwrap(), fresh_ours.child.id(), conns).await);
        drop(fresh_ours);
    }
    let n_mem = median(samples.0);
    let scenario = format!("idle memory, {conns} conns");
    for (mode, ours) in [("shared", samples.1), ("per-connection", samples.2)] {
        let p_mem = median(ours);
        rows.push(row(&scenario, mode, "bytes/conn", p_mem, Some(n_mem)));
        rows.push(row(&scenario, mode, "bytes/conn above native", p_mem - n_mem, None));
    }

    eprintln!("bench: udp echo");
    let ours_udp = portcullis_udp(root, &cache)?;
    let run = s.run;
    let paired = alternate(s.rounds, native.udp.unwrap(), ours_udp.udp.unwrap(), |addr| async move {
        let (rate, lost) = load::udp_echo(addr, 16, run).await;
        if lost > 0 {
            eprintln!("bench: udp {addr}: {lost} datagram(s) unanswered within 100 ms");
        }
        vec![rate]
    })
    .await;
    rows.push(paired.row("udp echo 64 B, 16 clients", "shared", "dgram/s", 0));
    drop(ours_udp);
    drop(native);

    eprintln!("bench: start-up");
    let mut native_start = Vec::new();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..s.rounds {
        let started = Instant::now();
        let server = native_server()?;
        native_start.push(started.elapsed().as_secs_f64() * 1e3);
        drop(server);
        let fresh = root.join(format!("target/bench/cold-cache-{round}"));
        let _ = std::fs::remove_dir_all(&fresh);
        let started = Instant::now();
        drop(portcullis_tcp(root, &fresh, "shared")?);
        cold.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        drop(portcullis_tcp(root, &fresh, "shared")?);
        warm.push(started.elapsed().as_secs_f64() * 1e3);
        let _ = std::fs::remove_dir_all(&fresh);
    }
    let native_ms = median(native_start);
    rows.push(row("start-up to `listening on`", "cold cache", "ms", median(cold), Some(native_ms)));
    rows.push(row("start-up to `listening on`", "warm cache", "ms", median(warm), Some(native_ms)));

    eprintln!("bench: instantiation");
    let times = instantiation(s.instantiation_processes, 5_000)?;
    rows.push(row("instantiation from InstancePre", "pooling", "µs", times.up, None));
    rows.push(row("tear-down of that instance", "pooling", "µs", times.down, None));
    rows.push(row("instantiation + tear-down", "pooling", "µs", times.both, None));
    Ok((rows, times.probe_ns))
}

/// The medians, in µs, of instantiating `echo`, of tearing it down and of both,
/// measured by `portcullis-instantiate` (`n` times each) in `processes`
/// processes of its own (with the server's allocator): the median over the
/// processes of each one's median.
///
/// One process is not enough: on this machine the time drifts between levels
/// (≈ 10, ≈ 15, ≈ 18 µs) for seconds at a time, within a process too, with
/// address randomisation off as well; a memory probe run in the same process
/// moves with it (see `portcullis_bench::memory_latency_ns`). So each process
/// also reports its probe, and the processes' medians are printed with it.
fn instantiation(processes: usize, n: usize) -> Result<Instantiation> {
    let exe = std::env::current_exe()?.with_file_name("portcullis-instantiate");
    let (mut ups, mut downs, mut boths, mut probes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..processes {
        let out =
            Command::new(&exe).arg(n.to_string()).output().with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!("{} failed: {}", exe.display(), String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<f64> = text.split_whitespace().filter_map(|word| word.parse().ok()).collect();
        let [up, _n, down, both, probe] = numbers[..] else {
            bail!("unexpected output from portcullis-instantiate: {text}");
        };
        ups.push(up);
        downs.push(down);
        boths.push(both);
        probes.push(probe);
    }
    let shown: Vec<String> = ups.iter().zip(&probes).map(|(up, probe)| format!("{up:.1} ({probe:.1} ns)")).collect();
    eprintln!("bench: instantiation, each process's median (memory probe): {} µs", shown.join(" "));
    Ok(Instantiation { up: median(ups), down: median(downs), both: median(boths), probe_ns: median(probes) })
}

/// The medians over the processes (µs), and of their memory probes (ns per load).
struct Instantiation {
    up: f64,
    down: f64,
    both: f64,
    probe_ns: f64,
}

/// `probes`: the memory probe's readings (ns per load) at the start, during
/// instantiation and at the end of the run.
fn print_table(rows: &[Row], quick: bool, cores: usize, probes: [f64; 3]) {
    println!("| scenario | mode | metric | portcullis | native | ratio | rounds' ratios |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        let native = r.native.map(|n| format!("{n:.1}")).unwrap_or_else(|| "—".into());
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into());
        let range = match (r.ratio_min, r.ratio_max) {
            (Some(low), Some(high)) => format!("{low:.2}–{high:.2}"),
            _ => "—".into(),
        };
        println!("| {} | {} | {} | {:.1} | {native} | {ratio} | {range} |", r.scenario, r.mode, r.metric, r.portcullis);
    }
    println!(
        "\n{} run, {} cores; servers pinned to core 0, load generator to core 1; medians of alternating rounds; \
         ratio: median of the per-round ratios (their lowest and highest in the last column).",
        if quick { "quick" } else { "full" },
        cores
    );
    let [start, instantiation, end] = probes;
    println!(
        "Memory probe (a pointer chase through 384 KiB; higher is a busier machine): {start:.1} ns per load at the \
         start, {instantiation:.1} during instantiation, {end:.1} at the end."
    );
}

fn pin_to_core(core: usize) {
    // SAFETY: sched_setaffinity on this thread with a set we built.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
