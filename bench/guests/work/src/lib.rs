//! work: the bench's CPU-bound service, for scenarios where the server and
//! not the load generator is the bottleneck (instances over workers). Each
//! request is 64 bytes; the guest runs `WORK_ROUNDS` rounds of a hash over
//! it (default 200,000: about 1 ms of CPU on the bench's machine) and
//! answers 64 bytes, the request with the hash in its first 8. A fixed
//! count, not a time: a busy machine makes it slower, never less work.

use std::cell::Cell;

use portcullis_sdk::{Connection, Error, ErrorKind, Service, export_service};

/// Bytes per request and per answer.
const REQUEST: u32 = 64;

struct Work {
    rounds: u64,
    /// Requests answered by this instance (kept to show the state is per instance).
    answered: Cell<u64>,
}

impl Default for Work {
    fn default() -> Self {
        let rounds = std::env::var("WORK_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
        Work { rounds, answered: Cell::new(0) }
    }
}

/// `rounds` rounds of a 64-bit mix (splitmix64's finaliser) seeded by `seed`.
fn hash(seed: u64, rounds: u64) -> u64 {
    let mut x = seed;
    for i in 0..rounds {
        x ^= i;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

impl Service for Work {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let mut request = match conn.read_exact(REQUEST).await {
            Ok(request) => request,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return conn.close(),
            Err(e) => return Err(e),
        };
        let seed = u64::from_le_bytes(request[..8].try_into().expect("8 bytes"));
        request[..8].copy_from_slice(&hash(seed, self.rounds).to_le_bytes());
        self.answered.set(self.answered.get() + 1);
        conn.write_all(&request).await
    }
}

export_service!(Work);
