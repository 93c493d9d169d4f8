//! `portcullis inspect`: what a component is and what it may need.
//!
//! Reads the component's type only (its world, imports and exports); nothing is
//! instantiated. The grant hints come from which socket functions it imports:
//! a component that never imports `connection.connect` cannot open clients.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use wasmtime::component::types::ComponentItem;

use crate::component::Backend;
use crate::engine;

/// The report printed by `portcullis inspect COMPONENT`.
pub fn inspect(path: &Path) -> Result<String> {
    let engine = engine::new_engine()?;
    let component = engine::load_component(&engine, path, engine::default_cache_dir().as_deref())?;
    let ty = component.component_type();

    let mut imports = Vec::new();
    for (name, item) in ty.imports(&engine) {
        let functions: Vec<String> = match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                instance.exports(&engine).map(|(f, _)| f.to_string()).collect()
            }
            _ => Vec::new(),
        };
        imports.push((name.to_string(), functions));
    }
    let exports: Vec<String> = ty.exports(&engine).map(|(name, _)| name.to_string()).collect();

    let has = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    let wasi_backend = Backend::of(&engine, &component) == Backend::Wasi;
    let world = match (has("portcullis:socket/callbacks@"), has("wasi:cli/run@")) {
        (false, true) if wasi_backend => {
            "command (wasi:cli/run: a service listens where PORTCULLIS_LISTEN says; a program runs to completion)"
        }
        (true, true) => "program-with-callbacks (a main, and callbacks for its clients and listeners)",
        (false, true) => "program (a main that runs to completion)",
        (true, false) => "service (callbacks; attach it with --listen ADDR:PORT)",
        (false, false) => {
            "none: it exports neither portcullis:socket/callbacks nor wasi:cli/run, so portcullis cannot run it"
        }
    };
    let imports_fn = |iface: &str, func: &str| {
        imports.iter().any(|(name, fs)| name.starts_with(iface) && fs.iter().any(|f| f == func))
    };

    let backend = match Backend::of(&engine, &component) {
        Backend::Portcullis => "portcullis (portcullis:socket; the host listens and calls back)",
        Backend::Wasi => "wasi (standard wasi:sockets; it listens where PORTCULLIS_LISTEN says, which --listen sets)",
    };
    let mut out = String::new();
    writeln!(out, "component: {}", path.display())?;
    writeln!(out, "backend: {backend}")?;
    writeln!(out, "world: {world}")?;
    writeln!(out, "imports:")?;
    for (name, functions) in &imports {
        if functions.is_empty() {
            writeln!(out, "  {name}")?;
        } else {
            writeln!(out, "  {name}: {}", functions.join(", "))?;
        }
    }
    writeln!(out, "exports:")?;
    for name in &exports {
        writeln!(out, "  {name}")?;
    }
    // From its imports: what it may do, not what it will (Rust's std imports
    // WASI's socket interfaces whole).
    writeln!(out, "grants it may need:")?;
    let mut needs = Vec::new();
    if imports_fn("portcullis:socket/tcp@", "[static]connection.connect") {
        needs.push("  --allow-connect tcp://HOST:PORTS  (it opens TCP client connections)");
    }
    if imports_fn("portcullis:socket/tcp@", "[constructor]listener") {
        needs.push("  --allow-listen tcp://HOST:PORTS   (it creates its own listeners)");
    }
    if imports_fn("portcullis:socket/udp@", "[static]udp-client.bind") {
        needs.push("  --allow-udp udp://HOST:PORTS      (it binds UDP sockets and exchanges datagrams)");
    }
    // Standard sockets, WASI 0.3 (`types`) and 0.2 (`tcp`, `udp`).
    let wasi = |p3: &str, p2: (&str, &str)| imports_fn("wasi:sockets/types@", p3) || imports_fn(p2.0, p2.1);
    if wasi("[method]tcp-socket.connect", ("wasi:sockets/tcp@", "[method]tcp-socket.start-connect")) {
        needs.push("  --allow-connect tcp://HOST:PORTS  (it may open TCP connections through wasi:sockets)");
    }
    if wasi("[method]tcp-socket.listen", ("wasi:sockets/tcp@", "[method]tcp-socket.start-listen")) {
        needs.push(
            "  --listen ADDR:PORT                (it may listen through wasi:sockets: where --listen says, \
             told in PORTCULLIS_LISTEN; elsewhere with --allow-listen tcp://HOST:PORTS)",
        );
    }
    if wasi("[static]udp-socket.create", ("wasi:sockets/udp@", "[method]udp-socket.start-bind")) {
        needs.push("  --allow-udp udp://HOST:PORTS      (it may use UDP through wasi:sockets)");
    }
    if imports_fn("wasi:sockets/ip-name-lookup@", "resolve-addresses") {
        needs.push("  a grant by name (tcp://NAME:PORTS) (it may look names up: only names a grant names resolve)");
    }
    if needs.is_empty() {
        needs.push("  none (it reaches no network by itself)");
    }
    for need in needs {
        writeln!(out, "{need}")?;
    }
    Ok(out)
}
