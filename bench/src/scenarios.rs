//! The full run's scenarios, one function each: which servers each starts,
//! what load it puts on them and which rows it reports. [`run_all`] is the
//! list, in the order the table shows them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::report::{Row, row};
use crate::servers::{
    Target, hyper_server, native_proxy, native_server, portcullis_example, portcullis_example_tls,
    portcullis_on_workers, portcullis_tcp, portcullis_udp, portcullis_wasi_tcp, redis_server, wasmtime_serve, which,
};
use crate::stats::{Paired, alternate, median, rate_over};
use crate::tools;

/// How long and how often a run measures.
pub struct Settings {
    pub rounds: usize,
    /// Processes the instantiation loop runs in (see [`measure_instantiation`]).
    pub instantiation_processes: usize,
    pub run: Duration,
    pub latency_run: Duration,
    pub idle_conns: usize,
    /// Requests per `redis-benchmark` test in one round.
    pub redis_requests: usize,
}

impl Settings {
    /// `--quick`: a smoke run.
    pub const QUICK: Settings = Settings {
        rounds: 5,
        instantiation_processes: 3,
        run: Duration::from_millis(400),
        latency_run: Duration::from_millis(800),
        idle_conns: 1000,
        redis_requests: 20_000,
    };

    /// The full run.
    pub const FULL: Settings = Settings {
        rounds: 10,
        instantiation_processes: 7,
        run: Duration::from_secs(1),
        latency_run: Duration::from_secs(3),
        idle_conns: 5000,
        redis_requests: 300_000,
    };
}

/// Every scenario; with the rows, the memory probe's median reading during
/// the instantiation processes.
pub async fn run_all(root: &Path, s: &Settings) -> Result<(Vec<Row>, f64)> {
    let cache = root.join("target/bench/cache");
    std::fs::create_dir_all(&cache)?;
    let native = native_server()?;
    let ours = portcullis_tcp(root, &cache, "shared")?;
    let ours_per_conn = portcullis_tcp(root, &cache, "per-connection")?;
    let (n_tcp, p_tcp, p_tcp_per_conn) = (native.tcp_target(), ours.tcp_target(), ours_per_conn.tcp_target());

    let mut rows = tcp_echo(s, n_tcp, p_tcp).await;
    let wasi = portcullis_wasi_tcp(root, &cache)?;
    rows.extend(tcp_echo_wasi_backend(s, n_tcp, p_tcp, wasi.tcp_target()).await);
    drop(wasi);
    rows.extend(tcp_echo_per_connection(s, n_tcp, p_tcp_per_conn).await);
    rows.extend(connection_churn(s, n_tcp, p_tcp, p_tcp_per_conn).await);
    rows.extend(fixed_rate_latency(s, n_tcp, p_tcp).await);
    // Idle memory starts fresh servers of its own.
    drop(ours);
    drop(ours_per_conn);
    rows.extend(idle_memory(s, root, &cache).await?);
    rows.extend(udp_echo(s, root, &cache, native.udp_target()).await?);
    drop(native);
    rows.extend(resp_kv_against_redis(s, root, &cache).await?);
    rows.extend(tcp_proxy_in_front_of_redis(s, root, &cache).await?);
    rows.extend(http_hello_under_wrk(s, root, &cache).await?);
    rows.extend(tls_http_hello_under_wrk(s, root, &cache).await?);
    rows.extend(workers(s, root, &cache).await?);
    rows.extend(start_up(s, root)?);
    let (instantiation_rows, probe_ns) = instantiation(s)?;
    rows.extend(instantiation_rows);
    Ok((rows, probe_ns))
}

/// Closed-loop echo on 50 connections, 64 B and 16 KiB messages, one shared
/// instance: messages and megabytes per second.
async fn tcp_echo(s: &Settings, native: Target, ours: Target) -> Vec<Row> {
    let mut rows = Vec::new();
    for (size, label) in [(64usize, "64 B"), (16 * 1024, "16 KiB")] {
        eprintln!("bench: tcp echo {label}");
        let run = s.run;
        let paired = alternate(s.rounds, native, ours, rate_over(0, run), |addr| async move {
            vec![load::tcp_echo(addr, 50, size, run).await]
        })
        .await;
        let scenario = format!("tcp echo {label}, 50 conns");
        rows.push(paired.row(&scenario, "shared", "msg/s", 0));
        rows.push(paired.scaled_row(&scenario, "shared", "MB/s", 0, size as f64 / 1e6));
        rows.push(paired.cpu_row(&scenario, "shared", "msg"));
    }
    rows
}

/// Closed-loop echo on 50 connections, 64 B, of the echo built with the SDK's
/// WASI backend (on wasmtime-wasi's sockets, under portcullis): against
/// native tokio, and against the same echo on the portcullis backend (in
/// that row the baseline column is the portcullis backend).
async fn tcp_echo_wasi_backend(s: &Settings, native: Target, ours: Target, wasi: Target) -> Vec<Row> {
    eprintln!("bench: tcp echo 64 B, WASI backend");
    let run = s.run;
    let echo = |addr| async move { vec![load::tcp_echo(addr, 50, 64, run).await] };
    let against_native = alternate(s.rounds, native, wasi, rate_over(0, run), echo).await;
    let against_ours = alternate(s.rounds, ours, wasi, rate_over(0, run), echo).await;
    let scenario = "tcp echo 64 B, 50 conns";
    vec![
        against_native.row(scenario, "WASI backend", "msg/s", 0),
        against_native.cpu_row(scenario, "WASI backend", "msg"),
        against_ours.row(scenario, "WASI / portcullis backend", "msg/s", 0),
        against_ours.cpu_row(scenario, "WASI / portcullis backend", "msg"),
    ]
}

/// Closed-loop echo on 50 connections, 64 B, an instance per connection.
async fn tcp_echo_per_connection(s: &Settings, native: Target, ours_per_conn: Target) -> Vec<Row> {
    eprintln!("bench: tcp echo 64 B, an instance per connection");
    let run = s.run;
    let paired = alternate(s.rounds, native, ours_per_conn, rate_over(0, run), |addr| async move {
        vec![load::tcp_echo(addr, 50, 64, run).await]
    })
    .await;
    let scenario = "tcp echo 64 B, 50 conns";
    vec![paired.row(scenario, "per-connection", "msg/s", 0), paired.cpu_row(scenario, "per-connection", "msg")]
}

/// Connect, one 64 B round trip, close, 8 at a time: connections per second,
/// with a shared instance and with an instance per connection.
async fn connection_churn(s: &Settings, native: Target, ours: Target, ours_per_conn: Target) -> Vec<Row> {
    eprintln!("bench: connection churn");
    let run = s.run;
    let mut rows = Vec::new();
    for (mode, server) in [("shared", ours), ("per-connection", ours_per_conn)] {
        let paired = alternate(s.rounds, native, server, rate_over(0, run), |addr| async move {
            vec![load::churn(addr, 8, run).await]
        })
        .await;
        rows.push(paired.row("connection churn, 64 B round trip", mode, "conn/s", 0));
        rows.push(paired.cpu_row("connection churn, 64 B round trip", mode, "conn"));
    }
    rows
}

/// Open-loop echo at 10k messages per second on 50 connections: the p50, p99
/// and p99.9 round trip, and how far p99 is above native's.
async fn fixed_rate_latency(s: &Settings, native: Target, ours: Target) -> Vec<Row> {
    eprintln!("bench: fixed-rate latency");
    let run = s.latency_run;
    let sent = move |_: &[f64]| 10_000.0 * run.as_secs_f64();
    let paired = alternate(s.rounds, native, ours, sent, |addr| async move {
        let (p50, p99, p999) = load::fixed_rate(addr, 50, 10_000.0, run).await;
        vec![p50, p99, p999]
    })
    .await;
    let mut rows = Vec::new();
    for (i, metric) in ["p50 µs", "p99 µs", "p99.9 µs"].iter().enumerate() {
        rows.push(paired.row("fixed rate 10k msg/s, 50 conns", "shared", metric, i));
    }
    rows.push(paired.difference_row("fixed rate 10k msg/s, 50 conns", "shared", "p99 µs above native", 1));
    rows.push(paired.cpu_row("fixed rate 10k msg/s, 50 conns", "shared", "msg"));
    rows
}

/// The growth of each server's resident set per idle connection, in both
/// instance modes, and how far portcullis's is above native's.
async fn idle_memory(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    eprintln!("bench: idle memory");
    // Fresh servers each round: what a previous round allocated (and the
    // allocator kept) must not count.
    let conns = s.idle_conns;
    let mut samples = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.rounds.min(3) {
        let fresh_native = native_server()?;
        samples.0.push(load::idle_memory(fresh_native.tcp.unwrap(), fresh_native.child.id(), conns).await);
        drop(fresh_native);
        let fresh_ours = portcullis_tcp(root, cache, "shared")?;
        samples.1.push(load::idle_memory(fresh_ours.tcp.unwrap(), fresh_ours.child.id(), conns).await);
        drop(fresh_ours);
        let fresh_ours = portcullis_tcp(root, cache, "per-connection")?;
        samples.2.push(load::idle_memory(fresh_ours.tcp.unwrap(), fresh_ours.child.id(), conns).await);
        drop(fresh_ours);
    }
    let n_mem = median(samples.0);
    let scenario = format!("idle memory, {conns} conns");
    let mut rows = Vec::new();
    for (mode, ours) in [("shared", samples.1), ("per-connection", samples.2)] {
        let p_mem = median(ours);
        rows.push(row(&scenario, mode, "bytes/conn", p_mem, Some(n_mem)));
        rows.push(row(&scenario, mode, "bytes/conn above native", p_mem - n_mem, None));
    }
    Ok(rows)
}

/// UDP echo of 64 B datagrams from 16 clients: datagrams per second.
async fn udp_echo(s: &Settings, root: &Path, cache: &Path, native: Target) -> Result<Vec<Row>> {
    eprintln!("bench: udp echo");
    let ours_udp = portcullis_udp(root, cache)?;
    let run = s.run;
    let paired = alternate(s.rounds, native, ours_udp.udp_target(), rate_over(0, run), |addr| async move {
        let (rate, lost) = load::udp_echo(addr, 16, run).await;
        if lost > 0 {
            eprintln!("bench: udp {addr}: {lost} datagram(s) unanswered within 100 ms");
        }
        vec![rate]
    })
    .await;
    drop(ours_udp);
    let scenario = "udp echo 64 B, 16 clients";
    Ok(vec![paired.row(scenario, "shared", "dgram/s", 0), paired.cpu_row(scenario, "shared", "dgram")])
}

/// `redis-benchmark -t set,get -P 16 -c 50` against `addr`: SET and GET
/// requests per second, then their p99 in µs (zeros when it failed, which
/// the full run reports as a row that measured nothing).
async fn redis_set_get(addr: SocketAddr, requests: usize) -> Vec<f64> {
    let measured = tools::redis_benchmark(addr, "set,get", requests).map(|rates| {
        let ((set, set_p99), (get, get_p99)) = (tools::rate_of(&rates, "SET"), tools::rate_of(&rates, "GET"));
        vec![set, get, set_p99, get_p99]
    });
    or_zeros(measured, 4)
}

/// A real tool's values, or `n` zeros when it failed (said on stderr; the
/// full run then reports the row as measuring nothing).
fn or_zeros(measured: Result<Vec<f64>>, n: usize) -> Vec<f64> {
    measured.unwrap_or_else(|e| {
        eprintln!("bench: {e:#}");
        vec![0.0; n]
    })
}

/// The requests of one [`redis_set_get`] round: `requests` SETs and as many GETs.
fn redis_work(requests: usize) -> impl Fn(&[f64]) -> f64 {
    move |_| 2.0 * requests as f64
}

/// The rows of [`redis_set_get`]'s values, against the baseline `mode` names.
fn redis_rows(paired: &Paired, scenario: &str, mode: &str) -> Vec<Row> {
    vec![
        paired.row(scenario, &format!("SET, {mode}"), "ops/s", 0),
        paired.row(scenario, &format!("GET, {mode}"), "ops/s", 1),
        paired.row(scenario, &format!("SET, {mode}"), "p99 µs", 2),
        paired.row(scenario, &format!("GET, {mode}"), "p99 µs", 3),
    ]
}

/// `resp-kv` against a real `redis-server` (in the baseline column), both
/// on core 0, under `redis-benchmark` SET and GET.
async fn resp_kv_against_redis(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    eprintln!("bench: resp-kv against redis-server");
    let redis = redis_server()?;
    let ours = portcullis_example(root, cache, "resp-kv", &[])?;
    let requests = s.redis_requests;
    let paired = alternate(s.rounds, redis.tcp_target(), ours.tcp_target(), redis_work(requests), |addr| {
        redis_set_get(addr, requests)
    })
    .await;
    let scenario = "resp-kv, redis-benchmark -P 16 -c 50";
    let mut rows = redis_rows(&paired, scenario, "vs redis-server");
    rows.push(paired.cpu_row(scenario, "vs redis-server", "req"));
    Ok(rows)
}

/// `redis-benchmark` through `tcp-proxy` in front of `redis-server`, against
/// the same load straight to `redis-server`, and against a native tokio
/// proxy. The servers (redis and the proxy) share core 0.
async fn tcp_proxy_in_front_of_redis(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    eprintln!("bench: tcp-proxy in front of redis-server");
    let redis = redis_server()?;
    let upstream = redis.tcp.unwrap();
    let (env, grant) = (format!("UPSTREAM={upstream}"), format!("tcp://{upstream}"));
    let ours = portcullis_example(root, cache, "tcp-proxy", &["--env", &env, "--allow-connect", &grant])?;
    let native = native_proxy(upstream)?;
    let requests = s.redis_requests;
    let load = |addr| redis_set_get(addr, requests);
    // Direct, the CPU compared would be redis's against the proxy's: only
    // against the native proxy does it say something.
    let direct = alternate(s.rounds, redis.tcp_target(), ours.tcp_target(), redis_work(requests), load).await;
    let against_native = alternate(s.rounds, native.tcp_target(), ours.tcp_target(), redis_work(requests), load).await;
    let scenario = "redis-benchmark through tcp-proxy, -P 16 -c 50";
    let mut rows = redis_rows(&direct, scenario, "vs direct");
    rows.extend(redis_rows(&against_native, scenario, "vs native proxy").into_iter().take(2));
    rows.push(against_native.cpu_row(scenario, "vs native proxy", "req"));
    Ok(rows)
}

/// `http-hello` under `wrk` (50 connections, keep-alive) against native
/// hyper and, when the `wasmtime` command is installed, against `wasmtime
/// serve` running the same answers as a `wasi:http` component.
async fn http_hello_under_wrk(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    eprintln!("bench: http-hello under wrk");
    let ours = portcullis_example(root, cache, "http-hello", &[])?;
    let run = s.run;
    let load = |addr| async move { or_zeros(tools::wrk(addr, 50, run).map(|(rate, p99)| vec![rate, p99]), 2) };
    let scenario = "http-hello under wrk, 50 conns";
    let hyper = hyper_server()?;
    let paired = alternate(s.rounds, hyper.tcp_target(), ours.tcp_target(), rate_over(0, run), load).await;
    drop(hyper);
    let mut rows = vec![
        paired.row(scenario, "vs native hyper", "req/s", 0),
        paired.row(scenario, "vs native hyper", "p99 µs", 1),
        paired.cpu_row(scenario, "vs native hyper", "req"),
    ];
    if which("wasmtime").is_none() {
        eprintln!("bench: no `wasmtime` command (cargo xtask wasmtime): no wasmtime serve rows");
        return Ok(rows);
    }
    let serve = wasmtime_serve(root)?;
    let paired = alternate(s.rounds, serve.tcp_target(), ours.tcp_target(), rate_over(0, run), load).await;
    rows.push(paired.row(scenario, "vs wasmtime serve", "req/s", 0));
    rows.push(paired.row(scenario, "vs wasmtime serve", "p99 µs", 1));
    rows.push(paired.cpu_row(scenario, "vs wasmtime serve", "req"));
    Ok(rows)
}

/// `http-hello` on a `tls://` listener against the same on plain TCP, both
/// portcullis, under `wrk` (50 keep-alive connections: this measures the
/// encryption of each request and answer, not handshakes).
async fn tls_http_hello_under_wrk(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    eprintln!("bench: http-hello over TLS under wrk");
    let plain = portcullis_example(root, cache, "http-hello", &[])?;
    let tls = portcullis_example_tls(root, cache, "http-hello", &cache.join("tls"))?;
    let tls_addr = tls.tcp_target().addr;
    let run = s.run;
    let load = |addr: SocketAddr| async move {
        let url = if addr == tls_addr { format!("https://{addr}/") } else { format!("http://{addr}/") };
        or_zeros(tools::wrk_url(&url, 50, run).map(|(rate, p99)| vec![rate, p99]), 2)
    };
    let paired = alternate(s.rounds, plain.tcp_target(), tls.tcp_target(), rate_over(0, run), load).await;
    let (scenario, mode) = ("http-hello over TLS under wrk, 50 conns", "TLS vs plain (both portcullis)");
    Ok(vec![
        paired.row(scenario, mode, "req/s", 0),
        paired.row(scenario, mode, "p99 µs", 1),
        paired.cpu_row(scenario, mode, "req"),
    ])
}

/// A service over 2 workers against the same over 1 (the baseline column is
/// the one worker), both free to use every core, the load generator on
/// core 1: `work` (each 64 B request ~1 ms of the guest's CPU, so the server
/// and not the load generator sets the pace) with an instance per worker and
/// per connection; echo 64 B per worker (spreading must not cost CPU per
/// message); churn with an instance per connection.
async fn workers(s: &Settings, root: &Path, cache: &Path) -> Result<Vec<Row>> {
    let run = s.run;
    let mut rows = Vec::new();
    let echo = |addr| async move { vec![load::tcp_echo(addr, 50, 64, run).await] };
    for mode in ["per-worker", "per-connection"] {
        eprintln!("bench: work (~1 ms a request), 2 workers against 1, {mode}");
        let (one, two) = (
            portcullis_on_workers(root, cache, "work", 1, mode)?,
            portcullis_on_workers(root, cache, "work", 2, mode)?,
        );
        let paired = alternate(s.rounds, one.tcp_target(), two.tcp_target(), rate_over(0, run), echo).await;
        let scenario = "work (~1 ms a request), 50 conns";
        let mode = format!("2 workers / 1, {mode}");
        rows.push(paired.row(scenario, &mode, "req/s", 0));
        rows.push(paired.cpu_row(scenario, &mode, "req"));
    }
    eprintln!("bench: echo 64 B, 2 workers against 1");
    let (one, two) = (
        portcullis_on_workers(root, cache, "echo", 1, "per-worker")?,
        portcullis_on_workers(root, cache, "echo", 2, "per-worker")?,
    );
    let paired = alternate(s.rounds, one.tcp_target(), two.tcp_target(), rate_over(0, run), echo).await;
    let (scenario, mode) = ("tcp echo 64 B, 50 conns", "2 workers / 1, per-worker");
    rows.push(paired.row(scenario, mode, "msg/s", 0));
    rows.push(paired.cpu_row(scenario, mode, "msg"));
    // Closed loop, one worker saturates its core while two share the load
    // generator's: each wakes for fewer messages. At a rate neither
    // saturates, both see the same load, and CPU per message is what
    // spreading itself costs.
    let latency_run = s.latency_run;
    let paced = |addr| async move {
        let (p50, p99, _) = load::fixed_rate(addr, 50, 20_000.0, latency_run).await;
        vec![p50, p99]
    };
    let sent = move |_: &[f64]| 20_000.0 * latency_run.as_secs_f64();
    let paired = alternate(s.rounds, one.tcp_target(), two.tcp_target(), sent, paced).await;
    let scenario = "fixed rate 20k msg/s, 50 conns";
    rows.push(paired.row(scenario, mode, "p99 µs", 1));
    rows.push(paired.cpu_row(scenario, mode, "msg"));
    drop((one, two));
    eprintln!("bench: connection churn, 2 workers against 1");
    let (one, two) = (
        portcullis_on_workers(root, cache, "echo", 1, "per-connection")?,
        portcullis_on_workers(root, cache, "echo", 2, "per-connection")?,
    );
    let churn = |addr| async move { vec![load::churn(addr, 8, run).await] };
    let paired = alternate(s.rounds, one.tcp_target(), two.tcp_target(), rate_over(0, run), churn).await;
    let (scenario, mode) = ("connection churn, 64 B round trip", "2 workers / 1, per-connection");
    rows.push(paired.row(scenario, mode, "conn/s", 0));
    rows.push(paired.cpu_row(scenario, mode, "conn"));
    Ok(rows)
}

/// The time from starting a server to its `listening on` line: native's, and
/// portcullis's with a cold and with a warm compile cache.
fn start_up(s: &Settings, root: &Path) -> Result<Vec<Row>> {
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
    Ok(vec![
        row("start-up to `listening on`", "cold cache", "ms", median(cold), Some(native_ms)),
        row("start-up to `listening on`", "warm cache", "ms", median(warm), Some(native_ms)),
    ])
}

/// Instantiating `echo` from its `InstancePre` and tearing it down (no
/// native counterpart); with the rows, the memory probe's median reading
/// during the measurement.
fn instantiation(s: &Settings) -> Result<(Vec<Row>, f64)> {
    eprintln!("bench: instantiation");
    let times = measure_instantiation(s.instantiation_processes, 5_000)?;
    let rows = vec![
        row("instantiation from InstancePre", "pooling", "µs", times.up, None),
        row("tear-down of that instance", "pooling", "µs", times.down, None),
        row("instantiation + tear-down", "pooling", "µs", times.both, None),
    ];
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
fn measure_instantiation(processes: usize, n: usize) -> Result<Instantiation> {
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
