//! The key space: keys to values with optional deadlines, bounded in bytes.
//!
//! Expired keys go two ways, as in Redis: lazily, when a command touches one,
//! and actively, a few at a time before each command ([`Store::expire_due`])
//! from an index ordered by deadline, so keys nobody reads again do not hold
//! memory for ever. Every key counts its bytes and a fixed overhead against
//! `maxmemory`; a write that would pass it is refused whole (Redis's `-OOM`),
//! so no client can grow the instance until it traps and loses everything.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

/// What a key costs beyond its key and value bytes, for `maxmemory`: its
/// map slot (with the table's spare slots and the hole its last resize left
/// behind), two allocations, and a deadline's index entry. Measured: tiny
/// keys with deadlines took ~210 bytes each of linear memory.
pub const ENTRY_OVERHEAD: usize = 224;

/// The default of `maxmemory`: 40 MiB, within an instance's default 128 MiB
/// with room for the clients' budget and the host's buffers.
pub const DEFAULT_MAXMEMORY: usize = 40 * 1024 * 1024;

/// The time, read at most once per batch of commands and only by a command
/// that needs it (reading the clock is a call out of the guest).
#[derive(Default)]
pub struct Clock {
    read: Cell<Option<Instant>>,
}

impl Clock {
    /// A clock stopped at `at` (for tests).
    pub fn at(at: Instant) -> Self {
        Clock { read: Cell::new(Some(at)) }
    }

    pub fn now(&self) -> Instant {
        if let Some(read) = self.read.get() {
            return read;
        }
        let read = Instant::now();
        self.read.set(Some(read));
        read
    }

    /// The next [`Clock::now`] reads the clock again (after a wait).
    pub fn forget(&self) {
        self.read.set(None);
    }
}

/// A key's deadline in the index, unique per setting (the sequence number
/// orders equal instants).
type Slot = (Instant, u64);

/// When an existing key expires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Deadline {
    Never,
    At(Instant),
}

struct Entry {
    value: Rc<[u8]>,
    expires: Option<Slot>,
}

/// The write would take the store past `maxmemory`.
#[derive(Debug, PartialEq)]
pub struct OutOfMemory;

/// foldhash with a seed from the system's random source (through std's
/// `RandomState`): several times faster than std's SipHash on short keys,
/// and the secret seed keeps clients from choosing keys that collide.
type Hasher = foldhash::fast::FixedState;

fn random_hasher() -> Hasher {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
    Hasher::with_seed(seed)
}

pub struct Store {
    map: HashMap<Rc<[u8]>, Entry, Hasher>,
    by_deadline: BTreeMap<Slot, Rc<[u8]>>,
    next_seq: u64,
    used: usize,
    maxmemory: usize,
}

/// How a write treats the key's time to live.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ttl {
    /// No deadline (a plain `SET`).
    Clear,
    /// Keep the key's deadline, if any (`INCR`, `SET ... KEEPTTL`).
    Keep,
    At(Instant),
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Store {
    /// An empty store that holds at most `maxmemory` bytes (keys, values
    /// and [`ENTRY_OVERHEAD`] each).
    pub fn new(maxmemory: usize) -> Self {
        Store {
            map: HashMap::with_hasher(random_hasher()),
            by_deadline: BTreeMap::new(),
            next_seq: 0,
            used: 0,
            maxmemory,
        }
    }

    /// The key's value, unless it is missing or expired (then removed).
    pub fn get(&mut self, key: &[u8], now: &Clock) -> Option<Rc<[u8]>> {
        let entry = self.map.get(key)?;
        if is_due(entry, now) {
            self.remove(key);
            return None;
        }
        Some(entry.value.clone())
    }

    pub fn contains(&mut self, key: &[u8], now: &Clock) -> bool {
        self.get(key, now).is_some()
    }

    /// Whether all of `writes` (key, value length) fit together.
    pub fn all_fit<'a>(&self, writes: impl IntoIterator<Item = (&'a [u8], usize)>) -> bool {
        // The last write of a key is the one that stays.
        let writes: HashMap<&[u8], usize> = writes.into_iter().collect();
        let mut used = self.used;
        for (key, value_len) in writes {
            let old = self.map.get(key).map_or(0, |entry| cost(key, &entry.value));
            used = used - old + key.len() + value_len + ENTRY_OVERHEAD;
        }
        used <= self.maxmemory
    }

    /// Sets every key to its value (no deadline), all or nothing: fails,
    /// changing nothing, if the end state is past `maxmemory`.
    pub fn set_all(&mut self, pairs: Vec<(&[u8], Rc<[u8]>)>, now: &Clock) -> Result<(), OutOfMemory> {
        if !self.all_fit(pairs.iter().map(|(key, value)| (*key, value.len()))) {
            return Err(OutOfMemory);
        }
        // A pair may pass `maxmemory` for a moment (a big value before a
        // later pair shrinks the same key): the check above is the one
        // that holds.
        for (key, value) in pairs {
            self.put(key, value, Ttl::Clear, now, usize::MAX).expect("no limit while applying");
        }
        Ok(())
    }

    /// Sets the key. Fails, changing nothing, past `maxmemory`.
    pub fn set(&mut self, key: &[u8], value: Rc<[u8]>, ttl: Ttl, now: &Clock) -> Result<(), OutOfMemory> {
        self.put(key, value, ttl, now, self.maxmemory)
    }

    /// The `maxmemory` this store was made with.
    pub fn maxmemory(&self) -> usize {
        self.maxmemory
    }

    /// [`Store::set`] against `limit` bytes in place of `maxmemory`.
    fn put(&mut self, key: &[u8], value: Rc<[u8]>, ttl: Ttl, now: &Clock, limit: usize) -> Result<(), OutOfMemory> {
        if let Some(entry) = self.map.get_mut(key)
            && !is_due(entry, now)
        {
            // In place: the key keeps its allocation and its map slot.
            let used = self.used - entry.value.len() + value.len();
            if used > limit {
                return Err(OutOfMemory);
            }
            self.used = used;
            entry.value = value;
            match ttl {
                Ttl::Keep => {}
                Ttl::Clear if entry.expires.is_none() => {}
                Ttl::Clear => {
                    self.set_deadline(key, None);
                }
                Ttl::At(at) => {
                    self.set_deadline(key, Some(at));
                }
            }
            return Ok(());
        }
        self.remove(key); // expired, if there at all
        if self.used + cost(key, &value) > limit {
            return Err(OutOfMemory);
        }
        let key: Rc<[u8]> = Rc::from(key);
        self.used += cost(&key, &value);
        self.map.insert(key.clone(), Entry { value, expires: None });
        if let Ttl::At(at) = ttl {
            self.set_deadline(&key, Some(at));
        }
        Ok(())
    }

    /// Removes the key; whether it was there (and not expired).
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let Some((key, entry)) = self.map.remove_entry(key) else { return false };
        self.used -= cost(&key, &entry.value);
        if let Some(deadline) = entry.expires {
            self.by_deadline.remove(&deadline);
        }
        true
    }

    /// Gives an existing key a deadline (`None`: none); whether it exists.
    pub fn set_deadline(&mut self, key: &[u8], at: Option<Instant>) -> bool {
        let Some(entry) = self.map.get_mut(key) else { return false };
        if let Some(old) = entry.expires.take() {
            self.by_deadline.remove(&old);
        }
        if let Some(at) = at {
            let deadline = (at, self.next_seq);
            self.next_seq += 1;
            entry.expires = Some(deadline);
            let (key, _) = self.map.get_key_value(key).expect("present");
            self.by_deadline.insert(deadline, key.clone());
        }
        true
    }

    /// The key's deadline, if the key exists.
    pub fn deadline(&mut self, key: &[u8], now: &Clock) -> Option<Deadline> {
        let entry = self.map.get(key)?;
        if is_due(entry, now) {
            self.remove(key);
            return None;
        }
        Some(entry.expires.map_or(Deadline::Never, |(at, _)| Deadline::At(at)))
    }

    /// Removes at most `limit` keys whose deadline has passed, soonest first.
    pub fn expire_due(&mut self, now: &Clock, limit: usize) {
        for _ in 0..limit {
            let Some((&(at, _), key)) = self.by_deadline.first_key_value() else { return };
            if at > now.now() {
                return;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Keys held, those expired but not yet removed included (as Redis's
    /// `DBSIZE`: counting only live ones would mean removing every due key
    /// at once, unbounded work in one command).
    pub fn key_count(&self) -> usize {
        self.map.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.by_deadline.clear();
        self.used = 0;
    }

    /// Bytes counted against `maxmemory`.
    pub fn used(&self) -> usize {
        self.used
    }
}

fn is_due(entry: &Entry, now: &Clock) -> bool {
    entry.expires.is_some_and(|(at, _)| at <= now.now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn value(text: &str) -> Rc<[u8]> {
        Rc::from(text.as_bytes())
    }

    #[test]
    fn the_clock_is_read_once_until_forgotten() {
        let clock = Clock::default();
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), first);
        clock.forget();
        assert!(clock.now() > first);
    }

    #[test]
    fn keys_expire_lazily_and_actively() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        store.set(b"a", value("1"), Ttl::At(now + Duration::from_secs(5)), &Clock::at(now)).unwrap();
        store.set(b"b", value("2"), Ttl::At(now + Duration::from_secs(5)), &Clock::at(now)).unwrap();
        store.set(b"c", value("3"), Ttl::Clear, &Clock::at(now)).unwrap();
        assert_eq!(store.get(b"a", &Clock::at(now)).as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get(b"a", &Clock::at(later)), None);
        store.expire_due(&Clock::at(later), 10);
        assert_eq!(store.key_count(), 1);
        assert_eq!(store.used(), cost(b"c", b"3"));
    }

    #[test]
    fn keep_ttl_and_a_plain_set_clears_it() {
        let now = Instant::now();
        let at = now + Duration::from_secs(5);
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        store.set(b"k", value("1"), Ttl::At(at), &Clock::at(now)).unwrap();
        store.set(b"k", value("2"), Ttl::Keep, &Clock::at(now)).unwrap();
        assert_eq!(store.deadline(b"k", &Clock::at(now)), Some(Deadline::At(at)));
        store.set(b"k", value("3"), Ttl::Clear, &Clock::at(now)).unwrap();
        assert_eq!(store.deadline(b"k", &Clock::at(now)), Some(Deadline::Never));
        assert_eq!(store.by_deadline.len(), 0);
        assert_eq!(store.deadline(b"missing", &Clock::at(now)), None);
    }

    #[test]
    fn writes_past_maxmemory_are_refused_whole() {
        let now = Instant::now();
        let mut store = Store::new(2 * (ENTRY_OVERHEAD + 11));
        store.set(b"a", value("0123456789"), Ttl::Clear, &Clock::at(now)).unwrap();
        store.set(b"b", value("0123456789"), Ttl::Clear, &Clock::at(now)).unwrap();
        assert_eq!(store.set(b"c", value("0"), Ttl::Clear, &Clock::at(now)), Err(OutOfMemory));
        // Replacing a value counts what it frees.
        store.set(b"a", value("9876543210"), Ttl::Clear, &Clock::at(now)).unwrap();
        assert!(!store.all_fit([(&b"a"[..], 1), (&b"c"[..], 1)]));
        assert!(store.all_fit([(&b"a"[..], 1), (&b"a"[..], 10)]));
        assert!(store.remove(b"a"));
        assert!(store.all_fit([(&b"c"[..], 10)]));
    }

    #[test]
    fn set_all_checks_the_end_state_only() {
        let now = Clock::at(Instant::now());
        let mut store = Store::new(2 * ENTRY_OVERHEAD + 30);
        store.set(b"a", value("0123456789"), Ttl::Clear, &now).unwrap();
        // A big value for b, then a small one: the end state fits.
        let pairs = vec![(&b"b"[..], value(&"x".repeat(40))), (&b"b"[..], value("1"))];
        assert_eq!(store.set_all(pairs, &now), Ok(()));
        assert_eq!(store.get(b"b", &now).as_deref(), Some(&b"1"[..]));
        let pairs = vec![(&b"c"[..], value(&"x".repeat(40)))];
        assert_eq!(store.set_all(pairs, &now), Err(OutOfMemory));
        assert_eq!(store.used(), cost(b"a", b"0123456789") + cost(b"b", b"1"));
    }
}
