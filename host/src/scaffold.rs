//! `portcullis new NAME`: a service (or `--program`) crate of one's own,
//! outside this repository, whose one build command makes a component that
//! `portcullis run` serves (as `cargo component new` and `spin new` do).
//!
//! The SDK is not published yet, so the crate depends on it by path: the
//! `guest-sdk` of the source tree this binary was built from, or `--sdk`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The SDK of the source tree this binary was built from.
fn built_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

/// Writes the crate `name` into the new folder `dir` (`--program`: a
/// program with a `main` instead of a service), depending on the SDK at
/// `sdk` (default: the one this binary was built from). Fails if `dir`
/// exists, if `name` is no crate name, or if no SDK is found. Returns what
/// to do next, for the user.
///
/// ```text
/// let next = scaffold::new_crate("greeter", "greeter".as_ref(), false, None)?;
/// println!("{next}");
/// ```
pub fn new_crate(name: &str, dir: &Path, program: bool, sdk: Option<&Path>) -> Result<String> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(valid) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("`{name}` is no crate name: lower-case letters, digits, `-` and `_`, starting with a letter");
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(built_sdk);
    let sdk = sdk.canonicalize().ok().filter(|p| p.join("Cargo.toml").exists()).with_context(|| {
        format!("no portcullis SDK at {}: give the path of a portcullis checkout's guest-sdk with --sdk", sdk.display())
    })?;
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\n\
         # Not published yet: this portcullis checkout's SDK.\n\
         portcullis-sdk = {{ path = {:?} }}\n\n\
         # A crate of its own, even inside another workspace.\n[workspace]\n",
        sdk.display().to_string(),
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join(".cargo/config.toml"), "[build]\ntarget = \"wasm32-wasip2\"\n")?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::write(dir.join("src/lib.rs"), if program { PROGRAM } else { SERVICE })?;
    let file = format!("{}.wasm", name.replace('-', "_"));
    let run = |wasm: &str| match program {
        true => format!("portcullis run {wasm} --env TARGET=127.0.0.1:7000 --allow-connect tcp://127.0.0.1:7000"),
        false => format!("portcullis run {wasm} --listen 127.0.0.1:7000"),
    };
    Ok(format!(
        "created {}\nnext:\n  cd {}\n  cargo build --release\n  {}\nthe same source on standard wasi:sockets (docs/wasi.md):\n  \
         cargo build --release --features portcullis-sdk/wasi --target-dir target/wasi\n  {}\n",
        dir.display(),
        dir.display(),
        run(&format!("target/wasm32-wasip2/release/{file}")),
        run(&format!("target/wasi/wasm32-wasip2/release/{file}")),
    ))
}

const SERVICE: &str = r#"//! A service: portcullis calls it back for each connection.

use portcullis_sdk::{Connection, Error, Service, export_service};

#[derive(Default)]
struct Echo;

impl Service for Echo {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?; // what is there; empty at end of stream
        if data.is_empty() {
            return conn.close();
        }
        conn.write_all(&data).await
    }
}

export_service!(Echo);
"#;

const PROGRAM: &str = r#"//! A program: its `main` runs to completion, with clients of its own.

use portcullis_sdk::{Client, export_program};

async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::var("TARGET").map_err(|_| "set TARGET=host:port")?;
    let (host, port) = target.rsplit_once(':').ok_or("TARGET is host:port")?;
    let port: u16 = port.parse()?;
    let conn = Client::connect(host, port).await?;
    conn.write_all(b"hello\n").await?;
    let reply = conn.read().await?;
    println!("reply: {}", String::from_utf8_lossy(&reply));
    Ok(conn.close()?)
}

export_program!(main);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_odd_names_and_existing_folders() {
        let dir = std::env::temp_dir().join(format!("portcullis-scaffold-{}", std::process::id()));
        assert!(new_crate("Bad Name", &dir, false, None).is_err());
        std::fs::create_dir_all(&dir).unwrap();
        let err = new_crate("fine", &dir, false, None).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = new_crate("fine", &dir, false, Some(Path::new("/nonexistent"))).unwrap_err().to_string();
        assert!(err.contains("--sdk"), "{err}");
    }
}
