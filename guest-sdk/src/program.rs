//! Glue for `export_program!`: how a program's `main` result becomes an exit status.

use std::fmt::Display;

/// Prints a failed `main`'s error to stderr; the host turns `Err` into exit code 1.
#[doc(hidden)]
#[allow(clippy::result_unit_err)] // the shape of `wasi:cli/run`'s `result`
pub fn report<E: Display>(result: Result<(), E>) -> Result<(), ()> {
    result.map_err(|e| eprintln!("error: {e}"))
}
