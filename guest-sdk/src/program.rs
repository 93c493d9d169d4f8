//! Glue for `export_program!`: how a program's `main` result becomes an exit status.

use std::fmt::Display;

/// Prints a failed `main`'s error to stderr; the host turns `Err` into exit code 1.
#[doc(hidden)]
#[allow(clippy::result_unit_err)] // the shape of `wasi:cli/run`'s `result`
pub fn report<E: Display>(result: Result<(), E>) -> Result<(), ()> {
    result.map_err(|e| print_line(&format!("error: {e}")))
}

/// Writes `line` to stderr in one write: `eprintln!` writes its pieces one by
/// one, and the host's log lines (written by a thread of their own) could
/// land between them.
pub(crate) fn print_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}
