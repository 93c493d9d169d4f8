//! `cargo xtask build | demo | test | bench | image`: the one place that knows how to build the
//! guests and run everything. A fresh machine needs nothing but Rust: the
//! `wasm32-wasip2` target is installed here when missing.

mod image;
mod layout;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <build | demo | test | bench [--quick] | snapshot DIR>
  build  build the host (release) and every guest component (wasm32-wasip2,
         profile `guest`: release with LTO), and each again with the SDK's
         WASI backend (feature `wasi`) to target/wasi-backend/<name>.wasm
  demo   build the host and the echo example, then serve it on 127.0.0.1:61598
  test [FILTER...]  build, then run every test (unit, integration, SDK docs)
         and a smoke run of the bench (every scenario completes; no speed
         asserted); a full run writes docs/conformance.md. FILTER is passed to
         `cargo test` (e.g. `--test udp`, or a test name)
  bench  build, then measure portcullis against a native tokio baseline
         (--quick: a short smoke run, under 2 minutes)
  wasmtime  install the `wasmtime` command-line runtime (the version of the
         host's wasmtime) when it is missing; `test` does this too
  image  build, then the container image localhost/portcullis:latest with
         buildah (--storage-driver vfs; needs root): the host, the
         libraries it links, the examples; see docs/kubernetes.md
  snapshot DIR  build, then copy the host binary and the echo guest to DIR,
         to compare two builds: target/release/portcullis-bench ab DIR_A DIR_B LOAD";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = default_target_dir() {
        eprintln!("xtask: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("build") => build(),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("snapshot") if args.len() == 2 => snapshot(Path::new(&args[1])),
        Some("image") if args.len() == 1 => build().and_then(|()| image::build_image(&root())),
        Some("wasmtime") => ensure_wasmtime_cli(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    layout::root_from(env!("CARGO_MANIFEST_DIR"))
}

/// The bench's binary, beside the host's (the same release profile).
fn bench_bin() -> PathBuf {
    layout::portcullis_bin(&root()).with_file_name("portcullis-bench")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` with its stdout passed through line by line, and returns each
/// test's outcome (`test NAME ... ok`) by name; fails as [`run`] does, after
/// the outcomes are read.
fn run_recording(cmd: &mut Command) -> Result<HashMap<String, String>> {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("running {cmd:?}"))?;
    let mut outcomes = HashMap::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((name, outcome)) = line.strip_prefix("test ").and_then(|rest| rest.split_once(" ... ")) {
            outcomes.insert(name.to_string(), outcome.trim().to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(outcomes)
}

/// The test files whose scenarios run on both backends (`on_both_backends!`).
const CONFORMANCE_FILES: &[&str] =
    &["tcp_conformance", "udp", "clients", "permissions", "concurrency", "robustness", "idle", "cli", "real_clients"];

/// Writes the conformance table (scenario x backend, each cell from
/// `outcomes`) to `target/conformance.md` and, after a full run (`full`: no
/// filter), into `docs/conformance.md` between its markers.
fn write_conformance_table(outcomes: &HashMap<String, String>, full: bool) -> Result<()> {
    let mut table = String::from(
        "| file | scenario | portcullis backend | WASI backend | WASI backend on `wasmtime run` |\n|---|---|---|---|---|\n",
    );
    for file in CONFORMANCE_FILES {
        let listed = cargo()
            .args(["test", "--release", "-q", "-p", "portcullis-tests", "--test", file, "--", "--list"])
            .stderr(Stdio::null())
            .output()?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        for line in listed.lines() {
            let Some(name) = line.strip_prefix("portcullis_backend::").and_then(|l| l.strip_suffix(": test")) else {
                continue;
            };
            let listed_here = |module: &str| listed.lines().any(|l| l == format!("{module}::{name}: test"));
            let cell = |backend: &str| match outcomes.get(&format!("{backend}::{name}")).map(String::as_str) {
                Some("ok") => "pass".to_string(),
                Some(other) => format!("**{other}**"),
                None if listed_here(backend) => "not run".to_string(),
                None => "—".to_string(),
            };
            let scenario = name.replace('_', " ");
            table.push_str(&format!(
                "| `{file}` | {scenario} | {} | {} | {} |\n",
                cell("portcullis_backend"),
                cell("wasi_backend"),
                cell("on_wasmtime")
            ));
        }
    }
    std::fs::write(root().join("target/conformance.md"), &table)?;
    if !full {
        eprintln!("xtask: a filtered run's table is in target/conformance.md (docs/ keeps the last full run's)");
        return Ok(());
    }
    let page_path = root().join("docs/conformance.md");
    let page = std::fs::read_to_string(&page_path)?;
    let (start, end) = (CONFORMANCE_START, CONFORMANCE_END);
    if let (Some(a), Some(b)) = (page.find(start), page.find(end)) {
        let updated = format!("{}{start}\n{table}{}", &page[..a], &page[b..]);
        if updated != page {
            std::fs::write(&page_path, updated)?;
            eprintln!("xtask: docs/conformance.md's table updated from this run");
        }
    }
    Ok(())
}

const CONFORMANCE_START: &str = "<!-- conformance table: written by `cargo xtask test` from its run -->";
const CONFORMANCE_END: &str = "<!-- end of conformance table -->";

/// The `wasmtime` command-line runtime the WASI backend's tests run guests
/// on: the host's wasmtime version, with what those tests (and `wasmtime
/// serve` benchmarks) use.
const WASMTIME_CLI_VERSION: &str = "48.0.8";
const WASMTIME_CLI_FEATURES: &str = "run,serve,cranelift,component-model,component-model-async,cache,\
parallel-compilation,pooling-allocator,addr2line,logging";

/// Installs `wasmtime` (with `cargo install --locked`) unless that version
/// is on the PATH already.
fn ensure_wasmtime_cli() -> Result<()> {
    let installed = Command::new("wasmtime").arg("--version").output();
    if let Ok(out) = &installed
        && String::from_utf8_lossy(&out.stdout).starts_with(&format!("wasmtime {WASMTIME_CLI_VERSION}"))
    {
        return Ok(());
    }
    eprintln!("xtask: installing wasmtime-cli {WASMTIME_CLI_VERSION} (several minutes, once)");
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
        "install",
        "wasmtime-cli",
        "--version",
        WASMTIME_CLI_VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        WASMTIME_CLI_FEATURES,
    ]))
}

/// Installs the wasm32-wasip2 target when rustup does not list it yet.
fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => {
            eprintln!("xtask: installing the wasm32-wasip2 target");
            run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
        }
        Err(e) => bail!("rustup is needed to install the wasm32-wasip2 target: {e}"),
    }
}

/// Every guest crate: the examples, the test guests and the bench's (package
/// names).
fn guests() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in ["examples", "tests/guests", "bench/guests"] {
        for entry in std::fs::read_dir(root().join(dir))? {
            let manifest = entry?.path().join("Cargo.toml");
            if let Ok(text) = std::fs::read_to_string(&manifest) {
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("name = ").map(|v| v.trim_matches('"').to_string()))
                    .with_context(|| format!("no package name in {}", manifest.display()))?;
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Guests not written with the SDK (against the portcullis WIT itself, a
/// `wasi:http` handler for `wasmtime serve`, plain `std::net` programs):
/// they have no WASI-backend build.
const NOT_SDK_GUESTS: &[&str] = &["raw-hostile", "wasi-http-hello", "std-echo", "std-client", "std-programs"];

fn build() -> Result<()> {
    ensure_wasm_target()?;
    let mut guest_build = cargo();
    guest_build.args(["build", "--profile", "guest", "--target", "wasm32-wasip2"]);
    for guest in guests()? {
        guest_build.args(["-p", &guest]);
    }
    run(&mut guest_build)?;
    build_wasi_backend()?;
    run(cargo().args(["build", "--release", "-p", "portcullis"]))
}

/// Every SDK guest again with the SDK's WASI backend (its own cargo target
/// folder: the feature changes the SDK), copied to `target/wasi-backend/`.
fn build_wasi_backend() -> Result<()> {
    let root = root();
    let guests: Vec<String> = guests()?.into_iter().filter(|g| !NOT_SDK_GUESTS.contains(&g.as_str())).collect();
    let mut wasi_build = cargo();
    wasi_build
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "--features", "portcullis-sdk/wasi"])
        .arg("--target-dir")
        .arg(layout::wasi_cargo_target(&root));
    for guest in &guests {
        wasi_build.args(["-p", guest]);
    }
    run(&mut wasi_build)?;
    let built = layout::wasi_cargo_target(&root).join("wasm32-wasip2/guest");
    for guest in &guests {
        let from = built.join(format!("{}.wasm", guest.replace('-', "_")));
        let to = layout::wasi_guest(&root, guest);
        std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The host and the echo guest only: what the demo runs (every guest on
/// both backends is `build`'s, several times as long on a fresh machine).
fn build_demo() -> Result<()> {
    ensure_wasm_target()?;
    run(cargo().args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "-p", "echo"]))?;
    run(cargo().args(["build", "--release", "-p", "portcullis"]))
}

fn demo() -> Result<()> {
    build_demo()?;
    let echo = layout::guest(&root(), "echo");
    eprintln!("xtask: serving {} — try `nc 127.0.0.1 61598`; Ctrl-C stops", echo.display());
    run(Command::new(layout::portcullis_bin(&root())).arg("run").arg(&echo).args(["--listen", "127.0.0.1:61598"]))
}

fn bench(extra: &[String]) -> Result<()> {
    build()?;
    build_bench()?;
    run(Command::new(bench_bin()).args(extra))
}

fn build_bench() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "portcullis-bench"]))
}

/// A build frozen for `portcullis-bench ab`: the host binary and the echo
/// guest, as they are now, so that a later build can be measured against them.
fn snapshot(dir: &Path) -> Result<()> {
    build()?;
    build_bench()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (from, to) in [(layout::portcullis_bin(&root()), "portcullis"), (layout::guest(&root(), "echo"), "echo.wasm")] {
        std::fs::copy(&from, dir.join(to))
            .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
    }
    eprintln!("xtask: snapshot in {}", dir.display());
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    build()?;
    ensure_wasmtime_cli()?;
    // tests/deploy.rs runs the image's entrypoint.
    image::build_image(&root())?;
    // Release: the tests share the optimised host build with demo and bench, and
    // compile guests with an optimised Cranelift.
    let outcome = run_recording(
        cargo()
            .args(["test", "--release", "-p", "portcullis", "-p", "portcullis-protocol", "-p", "portcullis-tests"])
            .args(extra),
    );
    // The conformance table is this run's outcome, scenario x backend (also
    // with failures, which it then shows).
    if let Ok(results) = &outcome {
        write_conformance_table(results, extra.is_empty())?;
    }
    outcome?;
    // The bench's own helpers (its memory probe) and its argument parsing.
    run(cargo().args(["test", "--release", "-p", "portcullis-bench", "--lib", "--bins"]))?;
    // The examples' protocol code (RESP, the key space, HTTP requests), natively.
    run(cargo().args(["test", "--release", "-p", "resp-kv", "-p", "http-hello", "--lib"]))?;
    // The host's and the protocol crate's docs (their links included) must
    // build without warnings, and so must the SDK's.
    run(cargo()
        .args(["doc", "--release", "--no-deps", "-p", "portcullis", "-p", "portcullis-protocol"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    run(cargo()
        .args(["doc", "--release", "--no-deps", "-p", "portcullis-sdk", "--target", "wasm32-wasip2"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // The SDK's doc examples compile for wasm32-wasip2, and the runnable ones run
    // as WASI commands under portcullis itself.
    let runner = format!("{} run", layout::portcullis_bin(&root()).display());
    run(cargo()
        .args(["test", "--release", "--doc", "-p", "portcullis-sdk", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_WASM32_WASIP2_RUNNER", runner)
        .env("PORTCULLIS_CACHE_DIR", layout::test_cache(&root())))?;
    // The bench, as a smoke test: every scenario must complete and measure
    // something (it fails otherwise); how fast is not asserted.
    eprintln!("xtask: smoke run of the bench (`cargo xtask bench --quick`)");
    build_bench()?;
    run(Command::new(bench_bin()).arg("--quick"))
}

/// xtask finds what it built under the checkout's `target/`: a
/// `CARGO_TARGET_DIR` elsewhere would build for minutes, then fail to find
/// it. Said at once instead.
fn default_target_dir() -> Result<()> {
    let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") else { return Ok(()) };
    let wanted = root().join("target");
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(Path::new(&dir), &wanted) {
        return Ok(());
    }
    anyhow::bail!(
        "CARGO_TARGET_DIR={} is set, but xtask builds and runs from {} only: unset it (or make {} a link \
         to that folder)",
        Path::new(&dir).display(),
        wanted.display(),
        wanted.display()
    )
}
