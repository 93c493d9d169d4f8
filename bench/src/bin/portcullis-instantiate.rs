//! `portcullis-instantiate [N] [SLOTS] [GUEST]`: the median time of N
//! instantiations of a guest (the `echo` example unless GUEST names another)
//! from its `InstancePre` on the pooled engine (a fresh store and instance
//! each, callbacks looked up, as a connection gets with `--instances
//! per-connection`), and of tearing each down again (dropping the store, which
//! resets its pool slot): a connection pays both.
//!
//! A process of its own, with the allocator the `portcullis` binary uses
//! (mimalloc), while `portcullis-bench` and its native baseline keep the system
//! allocator. `cargo xtask bench` runs it; run it alone to profile the loop
//! (valgrind cannot reserve the default pool: pass a few SLOTS).
//!
//! The loop runs in ten parts with the memory probe
//! ([`portcullis_bench::memory_latency_ns`]) after each; the median of those
//! readings is printed last, to tell a quiet machine's result from a busy one's.

#[path = "../../../xtask/src/layout.rs"]
mod layout;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

/// Parts of the loop, each followed by a memory probe.
const PARTS: usize = 10;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    anyhow::ensure!(n > 0, "usage: portcullis-instantiate [N] [SLOTS] [GUEST], with N at least 1");
    let slots = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(portcullis::engine::POOLED_INSTANCES);
    let root = layout::root_from(env!("CARGO_MANIFEST_DIR"));
    let guest = args.get(2).map(PathBuf::from).unwrap_or_else(|| layout::guest(&root, "echo"));
    let runtime = portcullis::Runtime::pooled(slots, 0, portcullis::limits::DEFAULT_MAX_MEMORY)?
        .with_cache_dir(Some(root.join("target/bench/cache")));
    let mut spec = portcullis::config::ServiceSpec::new(guest);
    spec.instances = portcullis::config::Instances::PerConnection;
    let loaded = runtime.load(&spec)?;
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut up, mut down, mut probes) = tokio.block_on(async {
        for _ in 0..20 {
            portcullis::dispatch::instantiate_once(&loaded).await?;
        }
        let (mut up, mut down, mut probes) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
        for part in 0..PARTS {
            for _ in part * n / PARTS..(part + 1) * n / PARTS {
                let started = Instant::now();
                let instance = portcullis::dispatch::instantiate_once(&loaded).await?;
                let ready = Instant::now();
                drop(instance);
                up.push((ready - started).as_secs_f64() * 1e6);
                down.push(ready.elapsed().as_secs_f64() * 1e6);
            }
            probes.push(portcullis_bench::memory_latency_ns());
        }
        anyhow::Ok((up, down, probes))
    })?;
    let mut both: Vec<f64> = up.iter().zip(&down).map(|(u, d)| u + d).collect();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "{:.1} µs median over {n} to instantiate; {:.1} µs to tear down; {:.1} µs both; memory probe {:.1} ns per load",
        median(&mut up),
        median(&mut down),
        median(&mut both),
        median(&mut probes)
    );
    Ok(())
}
