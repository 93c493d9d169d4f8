//! `cargo xtask image`: the container image of `portcullis`, assembled
//! without a base image: the host binary and exactly the shared libraries
//! it links (what `ldd` names), the examples' components, the public CA
//! roots (Mozilla's, never the build machine's own bundle) for guests' TLS
//! clients and registries, and an unprivileged user. Built with `buildah`
//! (`--storage-driver vfs`, which needs no kernel overlay support), as
//! `localhost/portcullis:latest`.
//!
//! The image runs as uid 65532, keeps compiled components in
//! `/var/cache/portcullis` (a volume: mount something there so they
//! survive the container), and stops on SIGTERM, as Kubernetes sends it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::layout;

/// The image's name in buildah's local storage.
pub const IMAGE: &str = "localhost/portcullis:latest";

/// The unprivileged user and group the image runs as (the "nonroot" of
/// distroless images).
const USER: u32 = 65532;

/// Where Debian keeps the public CAs it trusts (package ca-certificates).
pub const MOZILLA_ROOTS: &str = "/usr/share/ca-certificates/mozilla";

/// Where the image keeps compiled components.
const CACHE: &str = "/var/cache/portcullis";

/// Assembles the image's files under `target/image/rootfs` and commits them
/// as [`IMAGE`]. The host and the guests must be built.
pub fn build_image(root: &Path) -> Result<()> {
    which("buildah").context("`buildah` is needed (apt-get install buildah)")?;
    let rootfs = root.join("target/image/rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).with_context(|| format!("clearing {}", rootfs.display()))?;
    }
    let binary = layout::portcullis_bin(root);
    put(&binary, &rootfs, "usr/local/bin/portcullis")?;
    // Without its line tables (most of the release binary's size); the
    // symbols stay, for a readable backtrace.
    let stripped = Command::new("strip").arg("--strip-debug").arg(rootfs.join("usr/local/bin/portcullis")).status();
    if !stripped.is_ok_and(|s| s.success()) {
        bail!("strip --strip-debug failed (binutils is needed)");
    }
    for library in linked_libraries(&binary)? {
        let inside = library.strip_prefix("/").expect("ldd names absolute paths");
        // The library's bytes under the name the binary asks for (a symlink
        // in the build machine's tree is followed).
        put(&library, &rootfs, inside.to_str().context("a library path that is not UTF-8")?)?;
    }
    for example in examples(root)? {
        let wasm = format!("{}.wasm", example.replace('-', "_"));
        put(&layout::guest(root, &example), &rootfs, &format!("usr/share/portcullis/examples/{wasm}"))?;
    }
    // The public CAs only (Mozilla's, as Debian packages them): never the
    // build machine's own bundle, which may hold private CAs added locally.
    let mut roots: Vec<PathBuf> = match std::fs::read_dir(MOZILLA_ROOTS) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect(),
        Err(_) => bail!("{MOZILLA_ROOTS} is missing (apt-get install ca-certificates)"),
    };
    roots.sort();
    let mut bundle = String::new();
    for root in &roots {
        bundle.push_str(&std::fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?);
    }
    write(&rootfs, "etc/ssl/certs/ca-certificates.crt", &bundle)?;
    write(&rootfs, "etc/passwd", &format!("nonroot:x:{USER}:{USER}:nonroot:/nonexistent:/sbin/nologin\n"))?;
    write(&rootfs, "etc/group", &format!("nonroot:x:{USER}:\n"))?;
    // Kubernetes mounts its own /etc/hosts and /etc/resolv.conf over these.
    write(&rootfs, "etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")?;
    write(&rootfs, "etc/nsswitch.conf", "hosts: files dns\n")?;
    for dir in ["proc", "dev", "tmp", "etc/portcullis", &CACHE[1..]] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(rootfs.join(&CACHE[1..]), Some(USER), Some(USER))
        .context("giving the cache folder to the image's user (run as root)")?;

    let buildah = |args: &[&str]| -> Result<String> {
        let out = Command::new("buildah").arg("--storage-driver").arg("vfs").args(args).output()?;
        if !out.status.success() {
            bail!("buildah {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // The image this replaces goes (vfs keeps every layer as a full copy).
    let _ = buildah(&["rmi", IMAGE]);
    let container = buildah(&["from", "scratch"])?;
    let assembled = (|| -> Result<()> {
        let mount = buildah(&["mount", &container])?;
        // `cp -a`: owners and modes as assembled (buildah copy would make them root's).
        let copied = Command::new("cp").arg("-a").arg(format!("{}/.", rootfs.display())).arg(&mount).status()?;
        buildah(&["umount", &container])?;
        if !copied.success() {
            bail!("copying {} into the image", rootfs.display());
        }
        let user = format!("{USER}:{USER}");
        let cache_env = format!("PORTCULLIS_CACHE_DIR={CACHE}");
        buildah(&[
            "config",
            "--entrypoint",
            r#"["/usr/local/bin/portcullis"]"#,
            "--cmd",
            "run --manifest /etc/portcullis/portcullis.toml",
            "--user",
            &user,
            "--env",
            &cache_env,
            "--volume",
            CACHE,
            "--workingdir",
            "/",
            "--stop-signal",
            "SIGTERM",
            "--label",
            "org.opencontainers.image.title=portcullis",
            "--label",
            "org.opencontainers.image.description=Run socket services compiled to WebAssembly components, with the network gated",
            "--label",
            "org.opencontainers.image.licenses=Apache-2.0",
            &container,
        ])?;
        buildah(&["commit", "--rm", &container, IMAGE])?;
        Ok(())
    })();
    if assembled.is_err() {
        let _ = buildah(&["rm", &container]);
    }
    assembled?;
    eprintln!("xtask: image {IMAGE} built (buildah --storage-driver vfs images)");
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// `ldd` names them.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libraries = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the
        // loader alone: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    if libraries.is_empty() {
        bail!("ldd named no library for {}: {text}", binary.display());
    }
    Ok(libraries)
}

/// The examples' package names (each is in the image).
fn examples(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("examples"))? {
        let manifest = entry?.path().join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && let Some(name) = text.lines().find_map(|l| l.strip_prefix("name = "))
        {
            names.push(name.trim_matches('"').to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Copies `from` to `inside` under `rootfs`, making its folders.
fn put(from: &Path, rootfs: &Path, inside: &str) -> Result<()> {
    let to = rootfs.join(inside);
    std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
    std::fs::copy(from, &to).with_context(|| format!("copying {} into the image", from.display()))?;
    Ok(())
}

fn write(rootfs: &Path, inside: &str, text: &str) -> Result<()> {
    let to = rootfs.join(inside);
    std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
    std::fs::write(&to, text).with_context(|| format!("writing {}", to.display()))
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{program} is not on PATH");
    }
    Ok(())
}
