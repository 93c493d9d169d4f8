//! Where `cargo xtask build` puts what it builds: the one place that knows.
//! The tests and the bench include this file by path (`#[path]`), since they
//! share no crate with xtask (which must build before anything else exists).

#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};

/// The workspace root, from the manifest directory of a crate one level
/// below it (`env!("CARGO_MANIFEST_DIR")`).
pub fn root_from(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).parent().expect("a crate inside the workspace").to_path_buf()
}

/// The guest components (the `guest` profile's folder of `wasm32-wasip2`).
pub fn guest_dir(root: &Path) -> PathBuf {
    root.join("target/wasm32-wasip2/guest")
}

/// The component built from guest crate `name` (`tcp-proxy` is `tcp_proxy.wasm`).
pub fn guest(root: &Path, name: &str) -> PathBuf {
    guest_dir(root).join(format!("{}.wasm", name.replace('-', "_")))
}

/// Where the WASI-backend builds of the guests go: `<name>.wasm` (package
/// name, e.g. `tcp-proxy.wasm`), built with `portcullis-sdk`'s feature `wasi`.
pub fn wasi_guest_dir(root: &Path) -> PathBuf {
    root.join("target/wasi-backend")
}

/// The WASI-backend component of guest crate `name`.
pub fn wasi_guest(root: &Path, name: &str) -> PathBuf {
    wasi_guest_dir(root).join(format!("{name}.wasm"))
}

/// Cargo's own target folder for the WASI-backend builds (the SDK's feature
/// differs, so they must not share the native builds' outputs).
pub fn wasi_cargo_target(root: &Path) -> PathBuf {
    wasi_guest_dir(root).join("cargo")
}

/// The `portcullis` binary (release profile).
pub fn portcullis_bin(root: &Path) -> PathBuf {
    root.join("target/release/portcullis")
}

/// The compile cache the tests and the SDK's doc tests share.
pub fn test_cache(root: &Path) -> PathBuf {
    root.join("target/portcullis-test-cache")
}
