//! Memory: each instance's [`MemoryAccount`] (its linear memories and
//! tables, charged by [`InstanceLimiter`], and the host memory held on its
//! behalf, [`HostCharge`]), drawing on the process's [`MemoryBudget`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::coalesce::Coalesced;

/// The most memory all instances of the process hold together (linear
/// memory, tables, host buffers): `--memory-budget`, default half the
/// machine's physical memory.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget { limit, used: AtomicU64::new(0) })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One instance's memory: what it holds against [`Limits::max_memory`](super::Limits::max_memory), and
/// through it against the process's [`MemoryBudget`].
#[derive(Debug)]
pub struct MemoryAccount {
    max: u64,
    used: AtomicU64,
    budget: Arc<MemoryBudget>,
    /// Refusals, for the log: coalesced over all instances of the component
    /// (with an instance per connection, "once per instance" would be once
    /// per connection).
    refusals: Arc<Coalesced>,
    /// A growth or charge was refused (a trap that follows is memory's).
    refused: std::sync::atomic::AtomicBool,
    /// The budget refused a charge (see [`MemoryAccount::budget_refused`]).
    budget_refused: std::sync::atomic::AtomicBool,
}

impl MemoryAccount {
    pub fn new(max: u64, budget: Arc<MemoryBudget>, refusals: Arc<Coalesced>) -> Arc<Self> {
        Arc::new(MemoryAccount {
            max,
            used: AtomicU64::new(0),
            budget,
            refusals,
            refused: Default::default(),
            budget_refused: Default::default(),
        })
    }

    /// Whether anything of this instance was refused for memory.
    pub fn was_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether the process's budget (not this instance's own limit) refused
    /// it something: another instance giving memory back could change that.
    pub fn budget_refused(&self) -> bool {
        self.budget_refused.load(Ordering::Relaxed)
    }

    /// Bytes this instance holds right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Adds `bytes` if both this instance's limit and the process's budget
    /// have room; otherwise charges nothing and returns why not.
    fn try_charge(&self, bytes: u64, what: &str) -> Result<(), String> {
        let fits = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|&total| total <= self.max)
        });
        let refusal = match fits {
            Err(used) => format!(
                "memory limit reached: {what} of {bytes} bytes would take the instance to {} bytes, over its {} \
                 (--max-memory)",
                used.saturating_add(bytes),
                self.max
            ),
            Ok(_) if self.budget.try_charge(bytes) => return Ok(()),
            Ok(_) => {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                self.budget_refused.store(true, Ordering::Relaxed);
                format!(
                    "memory budget reached: {what} of {bytes} bytes would take the process over its {} bytes \
                     (--memory-budget)",
                    self.budget.limit
                )
            }
        };
        self.refused.store(true, Ordering::Relaxed);
        self.refusals.warn(|| refusal.clone());
        Err(refusal)
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.budget.release(bytes);
    }

    /// Charges host memory held for the guest (a pending write's data, bytes
    /// gathered for a read, a socket's buffer) until the guard is dropped.
    /// Fails with a sentence for the guest's `generic` error when the
    /// instance or the process has no room.
    pub fn charge(self: &Arc<Self>, bytes: usize, what: &str) -> Result<HostCharge, String> {
        self.try_charge(bytes as u64, what)?;
        Ok(HostCharge { account: self.clone(), bytes: bytes as u64 })
    }
}

/// Host memory charged to an instance, given back when dropped.
#[derive(Debug)]
pub struct HostCharge {
    account: Arc<MemoryAccount>,
    bytes: u64,
}

impl Drop for HostCharge {
    fn drop(&mut self) {
        self.account.release(self.bytes);
    }
}

/// The store's `ResourceLimiter`: linear memories and tables of one instance
/// (all of them together) charged to its [`MemoryAccount`]. A refused growth
/// makes `memory.grow` (or `table.grow`) return -1 in the guest.
pub struct InstanceLimiter {
    account: Arc<MemoryAccount>,
    /// What this store's memories and tables hold now, given back on drop.
    charged: u64,
    /// The last growth charged, given back if wasmtime then fails it.
    last_growth: u64,
}

/// Wasmtime keeps a pointer per table element.
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

impl InstanceLimiter {
    pub fn new(account: Arc<MemoryAccount>) -> Self {
        InstanceLimiter { account, charged: 0, last_growth: 0 }
    }

    pub fn account(&self) -> &Arc<MemoryAccount> {
        &self.account
    }

    fn grow(&mut self, bytes: u64, what: &str) -> bool {
        self.last_growth = 0;
        if bytes == 0 {
            return true;
        }
        if self.account.try_charge(bytes, what).is_err() {
            return false;
        }
        self.charged += bytes;
        self.last_growth = bytes;
        true
    }

    fn undo_last(&mut self) {
        let bytes = std::mem::take(&mut self.last_growth);
        self.charged -= bytes;
        self.account.release(bytes);
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current) as u64, "a memory growth"))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current) as u64;
        Ok(self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES), "a table growth"))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        self.account.release(self.charged);
    }
}

#[cfg(test)]
impl MemoryAccount {
    /// An account with no limit, for unit tests of the socket core.
    pub fn unlimited() -> Arc<Self> {
        MemoryAccount::new(
            u64::MAX,
            MemoryBudget::new(u64::MAX),
            Coalesced::new("memory refusals", Some("test".into())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_holds_its_instance_and_the_budget() {
        let budget = MemoryBudget::new(300);
        let a = MemoryAccount::new(200, budget.clone(), Coalesced::new("memory refusals", Some("a".into())));
        let b = MemoryAccount::new(200, budget.clone(), Coalesced::new("memory refusals", Some("b".into())));
        let first = a.charge(150, "a write").unwrap();
        assert!(a.charge(51, "a write").unwrap_err().contains("--max-memory"), "the instance's own limit");
        let second = b.charge(150, "a write").unwrap();
        assert!(b.charge(1, "a write").unwrap_err().contains("--memory-budget"), "the process's budget");
        assert_eq!((a.used(), b.used(), budget.used()), (150, 150, 300));
        drop(first);
        assert_eq!((a.used(), budget.used()), (0, 150));
        let _third = b.charge(50, "a write").unwrap();
        drop(second);
        assert_eq!(budget.used(), 50);
    }

    #[test]
    fn a_limiter_counts_every_memory_of_the_instance_and_gives_it_back() {
        use wasmtime::ResourceLimiter;
        const PAGE: usize = 64 << 10;
        let budget = MemoryBudget::new(1 << 30);
        let account =
            MemoryAccount::new(4 * PAGE as u64, budget.clone(), Coalesced::new("memory refusals", Some("c".into())));
        let mut limiter = InstanceLimiter::new(account.clone());
        // Three memories of a page each, then one grows to two pages: four.
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        }
        assert!(limiter.memory_growing(PAGE, 2 * PAGE, None).unwrap());
        assert_eq!(account.used(), 4 * PAGE as u64);
        // A growth wasmtime then fails is given back...
        limiter.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert_eq!(account.used(), 3 * PAGE as u64);
        // ...and the sum over all memories is what is capped.
        assert!(!limiter.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        assert!(!limiter.table_growing(0, PAGE, None).unwrap(), "tables count too");
        assert_eq!(account.used(), 3 * PAGE as u64);
        drop(limiter);
        assert_eq!((account.used(), budget.used()), (0, 0));
    }

    #[test]
    fn three_memories_of_one_real_instance_share_its_limit() {
        // A module with three memories of one page each, and a way to grow each.
        let wasm = wat::parse_str(
            r#"(module
                (memory $a 1) (memory $b 1) (memory $c 1)
                (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (memory.grow $b (local.get 0)))
                (func (export "grow_c") (param i32) (result i32) (memory.grow $c (local.get 0))))"#,
        )
        .unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let account = MemoryAccount::new(
            5 * 65536,
            MemoryBudget::new(1 << 30),
            Coalesced::new("memory refusals", Some("three".into())),
        );
        let mut store = wasmtime::Store::new(&engine, InstanceLimiter::new(account.clone()));
        store.limiter(|limiter| limiter);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        assert_eq!(account.used(), 3 * 65536, "the three initial pages");
        let mut grow = |name: &str| {
            let f = instance.get_typed_func::<i32, i32>(&mut store, name).unwrap();
            f.call(&mut store, 1).unwrap()
        };
        assert_eq!(grow("grow_a"), 1, "fourth page: the old size in pages");
        assert_eq!(grow("grow_b"), 1, "fifth page");
        assert_eq!(grow("grow_c"), -1, "a sixth page is past the limit, whichever memory asks");
        assert_eq!(grow("grow_a"), -1);
        assert_eq!(account.used(), 5 * 65536);
        drop(store);
        assert_eq!(account.used(), 0, "a dropped store gives it all back");
    }
}
