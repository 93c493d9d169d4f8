//! The real load generators some scenarios use instead of [`crate::load`]:
//! `redis-benchmark` (Debian's `redis-tools`) and `wrk`, run as child
//! processes (on core 1 with the bench, whose affinity they inherit), and
//! the parsing of what they print.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One `redis-benchmark` test: requests per second and p99 latency in µs.
#[derive(Debug, PartialEq)]
pub struct RedisRate {
    pub test: String,
    pub rps: f64,
    pub p99_us: f64,
}

/// `redis-benchmark -t TESTS -n REQUESTS -P 16 -c 50 --csv` against `addr`.
pub fn redis_benchmark(addr: SocketAddr, tests: &str, requests: usize) -> Result<Vec<RedisRate>> {
    let out = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-t", tests])
        .args(["-n", &requests.to_string(), "-P", "16", "-c", "50", "-q", "--csv"])
        .output()
        .context("running redis-benchmark (Debian's redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("rror") {
        bail!("redis-benchmark against {addr} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_redis_csv(&text)
}

/// Reads `redis-benchmark --csv`: a header line, then one line per test
/// (`"SET","862069.00","0.805","0.224","0.815","1.111","1.231","1.727"`:
/// rps, then avg/min/p50/p95/p99/max latency in ms).
pub fn parse_redis_csv(text: &str) -> Result<Vec<RedisRate>> {
    let mut rates = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("\"test\"") && !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let [test, rps, _avg, _min, _p50, _p95, p99, _max] = fields[..] else {
            bail!("unexpected redis-benchmark line: {line}");
        };
        rates.push(RedisRate { test: test.to_string(), rps: rps.parse()?, p99_us: p99.parse::<f64>()? * 1e3 });
    }
    if rates.is_empty() {
        bail!("redis-benchmark printed no results: {text}");
    }
    Ok(rates)
}

/// The rate and p99 of `test` in `rates` (0 when missing, which the full
/// run then reports as measuring nothing).
pub fn rate_of(rates: &[RedisRate], test: &str) -> (f64, f64) {
    rates.iter().find(|r| r.test == test).map_or((0.0, 0.0), |r| (r.rps, r.p99_us))
}

/// `wrk -t1 -c CONNS -d SECONDS --latency http://ADDR/`: requests per second
/// and p99 latency in µs. Fails on any non-2xx answer or socket error.
pub fn wrk(addr: SocketAddr, conns: usize, duration: Duration) -> Result<(f64, f64)> {
    wrk_url(&format!("http://{addr}/"), conns, duration)
}

/// [`wrk`] of `url` (`https://` for TLS: wrk does not verify the
/// certificate).
pub fn wrk_url(url: &str, conns: usize, duration: Duration) -> Result<(f64, f64)> {
    let seconds = format!("{}s", duration.as_secs().max(1));
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", &conns.to_string(), "-d", &seconds, "--latency", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk against {url}: {text}");
    }
    parse_wrk(&text)
}

/// Reads `wrk --latency`'s `Requests/sec:` line and the `99%` line of its
/// latency distribution (`99%    1.23ms`; units us, ms or s).
pub fn parse_wrk(text: &str) -> Result<(f64, f64)> {
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk's output")?
        .trim()
        .parse()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .context("no 99% line in wrk's output (--latency)")?
        .trim();
    let p99_us = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>()?
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse::<f64>()? * 1e3
    } else if let Some(s) = p99.strip_suffix('s') {
        s.parse::<f64>()? * 1e6
    } else {
        bail!("unexpected wrk latency {p99}")
    };
    Ok((rate, p99_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"862069.00\",\"0.805\",\"0.224\",\"0.815\",\"1.111\",\"1.231\",\"1.727\"\n\
                    \"GET\",\"990099.00\",\"0.675\",\"0.224\",\"0.671\",\"0.943\",\"1.047\",\"1.255\"\n";
        let rates = parse_redis_csv(text).unwrap();
        assert_eq!(rate_of(&rates, "GET"), (990099.0, 1047.0));
        assert_eq!(rate_of(&rates, "INCR"), (0.0, 0.0));
        assert!(parse_redis_csv("\"test\",\"rps\"\n").is_err());
        assert!(parse_redis_csv("\"SET\",\"1\"\n").is_err());
    }

    #[test]
    fn wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.02ms  300.00us   5.00ms   90.00%\n  Latency Distribution\n     50%    0.98ms\n     75%    1.10ms\n     90%    1.30ms\n     99%    2.50ms\n  50000 requests in 1.00s, 6.00MB read\nRequests/sec:  49950.05\nTransfer/sec:      6.00MB\n";
        assert_eq!(parse_wrk(text).unwrap(), (49950.05, 2500.0));
        assert_eq!(parse_wrk(&text.replace("2.50ms", "812.00us")).unwrap().1, 812.0);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
    }
}
