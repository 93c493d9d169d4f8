//! The wasmtime engine and the on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes most of a second; a service that
//! restarts should not pay it again. [`load_component`] keys the cache on the
//! component's bytes and on the engine's compatibility hash, so a new wasmtime or
//! different settings never load a stale artifact.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::partial_file::Partial;

/// The engine every service in the process shares: component model with async,
/// concurrent calls into one instance, and an epoch that ticks every
/// [`EPOCH_TICK`] so that no guest can hold its thread.
pub fn new_engine() -> Result<Engine> {
    engine_with(Config::new())
}

/// The same engine with the pooling instance allocator, which pre-reserves
/// instance slots so that instantiating costs microseconds (for instance per
/// connection; measured by `cargo xtask bench`). Each slot's linear memory
/// has room for `max_memory` bytes (`--max-memory`; the store's limiter
/// enforces the exact figure, the slot only has to be big enough).
pub fn new_pooled_engine(max_instances: u32, max_memory: u64) -> Result<Engine> {
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_component_instances(max_instances)
        .total_core_instances(max_instances * 4)
        .total_memories(max_instances)
        .total_tables(max_instances * 4)
        // A store keeps the stack of its last async call for the next one, so
        // every live instance holds one; the second per slot is for calls
        // that wait on a stack of their own meanwhile. (wasmtime's default,
        // 1000, had every instance past the thousandth refused.)
        .total_stacks(max_instances * STACKS_PER_INSTANCE)
        .max_memory_size(usize::try_from(max_memory.next_multiple_of(64 << 10)).unwrap_or(usize::MAX).max(64 << 10))
        // Return freed slots to the OS 16 at a time (one batch of madvise calls,
        // not one per dropped instance): instantiation went from 19-30 µs to
        // 15-18 µs (`portcullis-bench instantiate`). A full pool flushes the
        // batch before it refuses, so no slot is lost.
        .decommit_batch_size(16);
    if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        // Reset a freed slot's dirty pages in place (the kernel lists them)
        // instead of returning them with madvise: the next instance in the slot
        // then takes no page faults (9 per connection before) and no TLB
        // shoot-down. Churn with an instance per connection: ~105 to ~70 µs of
        // system time per connection (`/usr/bin/time`). The price: a slot keeps
        // up to this much of its last instance's memory resident; an echo
        // connection dirties under 64 KiB (no faults left at this budget).
        //
        // A slot reset this way has nothing left to return to the OS, but
        // wasmtime still queues it (with an empty region) until the batch
        // above fills, so slots went round 16 at a time, each cold in the
        // caches. Freed at once, the next connection gets the slot the last
        // one left, still warm: churn with an instance per connection ran
        // 1.2-1.3x the connections per second (20 interleaved rounds,
        // `portcullis-bench churn-load`), with no `process_madvise` left.
        pooling
            .pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(SLOT_KEEP_RESIDENT)
            .table_keep_resident(8 << 10)
            .decommit_batch_size(1);
    }
    let mut config = Config::new();
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    engine_with(config)
}

/// Instance slots of the pooled engine by default (`--max-instances`): the most
/// connections a service with instances per connection holds open at once.
/// Slots only reserve address space (about 4 GiB each) until used.
pub const POOLED_INSTANCES: u32 = 10_000;

/// Async stacks in the pool per instance slot (see `new_pooled_engine`). Each
/// only reserves address space until used.
pub const STACKS_PER_INSTANCE: u32 = 2;

/// How much of a freed slot's linear memory is reset in place and kept resident
/// for the next instance (where the kernel can list dirty pages; Linux 6.7+).
pub const SLOT_KEEP_RESIDENT: usize = 64 << 10;

/// How often the epoch advances (see `state::new_store` for what it is for).
/// Also how long a computing guest holds its thread before it yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

fn engine_with(mut config: Config) -> Result<Engine> {
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.concurrency_support(true);
    config.epoch_interruption(true);
    if std::env::var_os("PORTCULLIS_PERFMAP").is_some() {
        // For profiling guests with `perf`: /tmp/perf-PID.map names the
        // compiled wasm functions (see bench/README.md). The compile cache
        // is bypassed then, since the map is written at compile time.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(|e| anyhow::Error::from(e).context("creating the wasmtime engine"))?;
    start_epoch_ticker(&engine)?;
    Ok(engine)
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] on a thread of its own,
/// until the engine is dropped: the thread holds only a weak reference, so
/// a dropped engine (and a pooled one's reserved address space) is freed,
/// and the thread ends at its next tick.
fn start_epoch_ticker(engine: &Engine) -> Result<std::thread::JoinHandle<()>> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("portcullis-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("starting the epoch ticker")
}

/// Where compiled components are kept: `$PORTCULLIS_CACHE_DIR`, else the user's
/// cache folder, else none (no caching).
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    dirs::cache_dir().map(|d| d.join("portcullis"))
}

/// The largest component file read: 512 MiB (components are a few MB; a
/// device such as `/dev/zero` or a huge file is refused before it is read).
pub const MAX_COMPONENT_FILE: u64 = 512 << 20;

fn read_component_file(path: &Path) -> Result<Vec<u8>> {
    let cannot_read = || format!("cannot read {}", path.display());
    let meta = std::fs::metadata(path).with_context(cannot_read)?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    if meta.len() > MAX_COMPONENT_FILE {
        bail!(
            "{} is {} MiB, more than a component may be ({} MiB)",
            path.display(),
            meta.len() >> 20,
            MAX_COMPONENT_FILE >> 20
        );
    }
    std::fs::read(path).with_context(cannot_read)
}

/// Reads, validates and compiles `path`, or loads it from `cache_dir` when it was
/// compiled before. Errors are one clear sentence naming the file.
pub fn load_component(engine: &Engine, path: &Path, cache_dir: Option<&Path>) -> Result<Component> {
    load_component_hashed(engine, path, cache_dir).map(|(component, _)| component)
}

/// [`load_component`], with the SHA-256 of the bytes it read (hex): what a
/// reload compares, so that the file is read and hashed once at start.
pub fn load_component_hashed(engine: &Engine, path: &Path, cache_dir: Option<&Path>) -> Result<(Component, String)> {
    let bytes = read_component_file(path)?;
    let sha256 = hex(&Sha256::digest(&bytes));
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly file", path.display());
    }
    // A core module has version 1; a component has version 0xd (layer 1).
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        bail!("{} is a core WebAssembly module, not a component (build it for wasm32-wasip2)", path.display());
    }

    let cached = cache_dir.map(|dir| dir.join(format!("{}.cwasm", cache_key(engine, &sha256))));
    if let Some(cached) = &cached
        && cached.exists()
    {
        // SAFETY: the file was written by `Component::serialize` of this very
        // engine configuration (the key includes its compatibility hash) into a
        // cache folder the operator owns; wasmtime still checks its header.
        match unsafe { Component::deserialize_file(engine, cached) } {
            Ok(component) => {
                tracing::debug!(path = %path.display(), cache = %cached.display(), "component loaded from cache");
                return Ok((component, sha256));
            }
            Err(e) => {
                tracing::warn!(cache = %cached.display(), "ignoring unusable cache entry: {e:#}")
            }
        }
    }

    let component = Component::new(engine, &bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid component: {e:#}", path.display()))?;
    if let Some(cached) = &cached
        && let Err(e) = store_in_cache(&component, cached)
    {
        tracing::warn!(cache = %cached.display(), "could not cache the compiled component: {e:#}");
    }
    Ok((component, sha256))
}

/// `bytes` in lowercase hex, as digests are written (`sha256:` + 64 of it).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file's name: the component's SHA-256 (its first 16 bytes, in
/// hex) and the engine configuration's compatibility hash.
fn cache_key(engine: &Engine, sha256: &str) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{}-{:016x}", &sha256[..32], hasher.finish())
}

/// Writes through a file of its own first, so that neither a concurrent
/// reader nor another writer (a process of the same id in another
/// container) ever sees or makes half a file.
fn store_in_cache(component: &Component, cached: &Path) -> Result<()> {
    let (partial, mut file) = Partial::create(cached)?;
    std::io::Write::write_all(&mut file, &component.serialize()?)?;
    partial.keep()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_ticker_ends_when_its_engine_is_dropped() {
        let engine = Engine::default();
        let ticker = start_epoch_ticker(&engine).unwrap();
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(!ticker.is_finished(), "ticking while the engine lives");
        drop(engine);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !ticker.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the ticker outlived its engine");
            std::thread::sleep(EPOCH_TICK);
        }
    }
}
