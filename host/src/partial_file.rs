//! A file written beside its place under a name no other writer has, and
//! moved into place only once whole: the compile cache and the pull cache
//! are shared by processes (containers with one volume, each its PID 1), so
//! a name made of the process id alone is not enough.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::{Context, Result};

/// A file being written beside `target`, under a name of its own; removed
/// when dropped unless [`Partial::keep`] renamed it to `target`.
pub struct Partial {
    path: PathBuf,
    target: PathBuf,
    kept: bool,
}

impl Partial {
    /// Creates the file exclusively (no other writer shares it).
    ///
    /// # Errors
    /// The folder cannot be made or written.
    pub fn create(target: &Path) -> Result<(Partial, std::fs::File)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = target.parent().expect("a file in a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let name = target.file_name().expect("a file name").to_string_lossy();
        let unique = format!("{name}.{}-{nanos}-{}.partial", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(unique);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok((Partial { path, target: target.to_path_buf(), kept: false }, file))
    }

    /// Where it is being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file into place.
    ///
    /// # Errors
    /// The rename fails (the file is removed then).
    pub fn keep(mut self) -> Result<()> {
        std::fs::rename(&self.path, &self.target).with_context(|| format!("writing {}", self.target.display()))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` is a [`Partial`]'s (a process stopped before it kept it).
pub fn is_partial(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "partial")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-partial-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_partial_file_is_its_own_and_gone_unless_kept() {
        let dir = scratch("partial");
        let target = dir.join("blob.wasm");
        let (first, _) = Partial::create(&target).unwrap();
        let (second, _) = Partial::create(&target).unwrap();
        assert_ne!(first.path, second.path, "two writers, two files");
        let first_path = first.path.clone();
        drop(first);
        assert!(!first_path.exists(), "dropped, removed");
        second.keep().unwrap();
        assert!(target.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "only the kept file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
