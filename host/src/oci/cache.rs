//! Where pulled components are kept: `CACHE/oci/blobs/sha256/HEX.wasm` by
//! the layer's digest, and `CACHE/oci/refs/KEY`, one small record per
//! reference pulled (the manifest digest it resolved to, and the layer's).
//!
//! Several processes may share the folder (containers with one volume,
//! each its PID 1), so every file is written under a name no other writer
//! can have (created exclusively) and renamed into place once whole and
//! checked; a write that does not finish (a time-out, a signal) leaves
//! nothing behind. The folder is bounded: after each pull the newest
//! [`MAX_RECORDS`] records whose blobs fit in [`MAX_BYTES`] are kept, and
//! blobs no record names are removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::quoted;
use crate::engine::MAX_COMPONENT_FILE;
use crate::partial_file::{Partial, is_partial};

/// The most references the cache remembers.
pub const MAX_RECORDS: usize = 64;
/// The most bytes of components it keeps (those named by the newest
/// record are kept whatever their size).
pub const MAX_BYTES: u64 = 2 << 30;
/// How old a file no record names must be before it is removed: another
/// process may have just written it, and be about to name it.
const GRACE: Duration = Duration::from_secs(60);
/// How old a partial file must be to be another process's leftover (no
/// pull lasts longer than its 300 s).
const STALE_PARTIAL: Duration = Duration::from_secs(600);

/// What a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The manifest's (or index's) digest: what runs, and is logged.
    pub digest: String,
    /// The layer's digest: the name of its bytes.
    pub layer: String,
}

/// The cache folder (`CACHE/oci`).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the layer `digest` (`sha256:HEX`) is kept.
    ///
    /// # Errors
    /// A digest that is not sha256 with 64 hex digits.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(hex) = hex else { bail!("unsupported layer digest `{}` (sha256 expected)", quoted(digest)) };
        Ok(self.root.join("blobs/sha256").join(format!("{}.wasm", hex.to_ascii_lowercase())))
    }

    fn ref_path(&self, component: &str) -> PathBuf {
        let key = super::digest_of(component.as_bytes());
        self.root.join("refs").join(&key["sha256:".len()..])
    }

    /// What `component` resolved to when it was pulled, if it was.
    pub fn record(&self, component: &str) -> Option<Record> {
        read_record(&self.ref_path(component))
    }

    /// Remembers what `component` resolved to.
    ///
    /// # Errors
    /// The folder cannot be written.
    pub fn write_record(&self, component: &str, record: &Record) -> Result<()> {
        let text = format!("{}\n{}\n", record.digest, record.layer);
        let (partial, mut file) = Partial::create(&self.ref_path(component))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .with_context(|| format!("writing {}", partial.path().display()))?;
        partial.keep()
    }

    /// Whether the blob of `layer` is in the cache with that digest (a file
    /// changed on disk is not). Hashed on a blocking thread.
    pub async fn has_blob(&self, layer: &str) -> bool {
        let Ok(path) = self.blob_path(layer) else { return false };
        let layer = layer.to_string();
        tokio::task::spawn_blocking(move || file_digest(&path).is_some_and(|digest| digest == layer))
            .await
            .unwrap_or(false)
    }

    /// Removes what the bounds leave out (see the module's docs), and
    /// partial files left by a process that was stopped.
    pub fn collect(&self) {
        let refs = files_in(&self.root.join("refs"));
        let mut records: Vec<(SystemTime, PathBuf)> = refs
            .into_iter()
            .filter(|(_, path)| !is_partial(path))
            .map(|(meta, path)| (modified(&meta), path))
            .collect();
        records.sort_by_key(|record| std::cmp::Reverse(record.0));
        let mut kept_blobs: Vec<PathBuf> = Vec::new();
        let mut bytes = 0u64;
        for (index, (_, path)) in records.iter().enumerate() {
            let blob = read_record(path).and_then(|record| self.blob_path(&record.layer).ok());
            let size = blob.as_ref().and_then(|blob| std::fs::metadata(blob).ok()).map_or(0, |meta| meta.len());
            let new_blob = blob.as_ref().is_some_and(|blob| !kept_blobs.contains(blob));
            let fits = index == 0 || (index < MAX_RECORDS && bytes + if new_blob { size } else { 0 } <= MAX_BYTES);
            if !fits {
                let _ = std::fs::remove_file(path);
                continue;
            }
            if let Some(blob) = blob.filter(|_| new_blob) {
                bytes += size;
                kept_blobs.push(blob);
            }
        }
        let now = SystemTime::now();
        let age = |meta: &std::fs::Metadata| now.duration_since(modified(meta)).unwrap_or_default();
        for (meta, path) in files_in(&self.root.join("blobs/sha256")) {
            let unnamed = !is_partial(&path) && !kept_blobs.contains(&path) && age(&meta) > GRACE;
            let stale = is_partial(&path) && age(&meta) > STALE_PARTIAL;
            if unnamed || stale {
                let _ = std::fs::remove_file(&path);
            }
        }
        for (meta, path) in files_in(&self.root.join("refs")) {
            if is_partial(&path) && age(&meta) > STALE_PARTIAL {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// A record's file: the digest, then the layer's, a line each.
fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let (digest, layer) = (lines.next()?.to_string(), lines.next()?.to_string());
    Some(Record { digest, layer })
}

fn modified(meta: &std::fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The regular files of `dir`, with their metadata.
fn files_in(dir: &Path) -> Vec<(std::fs::Metadata, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| (meta, entry.path()))
        })
        .collect()
}

/// `sha256:` of a regular file of at most 512 MiB, read in pieces.
fn file_digest(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_COMPONENT_FILE {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(super::sha256_digest(hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-oci-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_newest_records_are_kept_and_blobs_no_record_names_go() {
        let dir = scratch("collect");
        let cache = Cache::new(dir.clone());
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let old = SystemTime::now() - Duration::from_secs(3600);
        let set_time = |path: &Path, when: SystemTime| {
            std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
        };
        // MAX_RECORDS + 1 records, each naming a blob of its own; the first is the oldest.
        for i in 0..=MAX_RECORDS {
            let layer = format!("sha256:{i:064x}");
            let blob = cache.blob_path(&layer).unwrap();
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, b"component").unwrap();
            set_time(&blob, old);
            let component = format!("oci://r.example/a:{i}");
            cache.write_record(&component, &Record { digest: digest('d'), layer }).unwrap();
            set_time(&cache.ref_path(&component), old + Duration::from_secs(i as u64));
        }
        let unnamed = cache.blob_path(&digest('e')).unwrap();
        std::fs::write(&unnamed, b"left over").unwrap();
        set_time(&unnamed, old);
        let fresh = cache.blob_path(&digest('f')).unwrap();
        std::fs::write(&fresh, b"just written by another process").unwrap();
        cache.collect();
        assert!(cache.record("oci://r.example/a:0").is_none(), "the oldest record goes past the count");
        assert!(!cache.blob_path(&format!("sha256:{:064x}", 0)).unwrap().exists(), "and its blob");
        assert!(cache.record(&format!("oci://r.example/a:{MAX_RECORDS}")).is_some());
        assert!(cache.blob_path(&format!("sha256:{MAX_RECORDS:064x}")).unwrap().exists());
        assert!(!unnamed.exists(), "a blob no record names goes");
        assert!(fresh.exists(), "unless it is new");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
