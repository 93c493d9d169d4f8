//! What the bench's binaries share: a probe of how fast the machine's memory
//! answers right now.
//!
//! This machine is a virtual one on a shared host, and its speed for
//! memory-bound work drifts between levels for seconds at a time, within one
//! process too. Instantiating a component is such work (wasmtime touches a few
//! hundred cache lines of metadata per instance): the same process measured
//! ≈ 10 µs in one second and ≈ 16 µs in the next, and a pointer chase run in
//! between moved with it. A result printed with the probe's reading tells
//! which kind of second it came from.

use std::time::Instant;

/// Loads in one probe: a few milliseconds.
const LOADS: usize = 400_000;

/// The probe's working set: 384 KiB, inside this machine's 512 KiB L2, far
/// beyond its L1.
const SLOTS: usize = 96 * 1024;

/// Nanoseconds per load of a pointer chase through [`SLOTS`] `u32`s linked in
/// one random cycle, so that every load waits for the one before and the
/// prefetcher cannot guess the next.
pub fn memory_latency_ns() -> f64 {
    // Built anew on each call, not kept: just written, the chain sits in L2,
    // so the chase reads L2's latency under whatever else shares the core's
    // caches, not how much of a kept chain the work in between evicted.
    let chain = random_cycle(SLOTS);
    let started = Instant::now();
    let mut at = 0u32;
    for _ in 0..LOADS {
        at = chain[at as usize];
    }
    std::hint::black_box(at);
    started.elapsed().as_secs_f64() * 1e9 / LOADS as f64
}

/// `next[i]` is the slot after `i` in one cycle through all `n` slots, in an
/// order fixed by a seeded xorshift (the same every run).
fn random_cycle(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0u32; n];
    for pair in 0..n {
        next[order[pair] as usize] = order[(pair + 1) % n];
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_one_cycle_through_every_slot() {
        let next = random_cycle(1000);
        let mut seen = vec![false; 1000];
        let mut at = 0u32;
        for _ in 0..1000 {
            assert!(!seen[at as usize], "slot {at} visited twice");
            seen[at as usize] = true;
            at = next[at as usize];
        }
        assert_eq!(at, 0, "the chain returns to its start after every slot");
    }
}
