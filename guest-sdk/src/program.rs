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

/// Writes `line` to stdout in one write (as [`print_line`] does for stderr).
#[cfg_attr(not(feature = "wasi"), allow(dead_code))]
pub(crate) fn print_stdout(line: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(format!("{line}\n").as_bytes());
}

/// Lines [`warn`] may write per second.
const WARNINGS_PER_SECOND: u32 = 1;

thread_local! {
    /// When the current second of [`warn`] began, lines written in it, and
    /// lines not written since the last one that was.
    static WARNINGS: std::cell::Cell<(Option<std::time::Instant>, u32, u64)> = const { std::cell::Cell::new((None, 0, 0)) };
}

/// Writes `line` to stderr, at most one line a second: lines in between are
/// counted, and the next line written says how many were not. For what a
/// peer can make happen over and over (a reset connection, an oversized
/// message): one client must not be able to fill the operator's log.
///
/// ```no_run
/// portcullis_sdk::warn("chat: member 7 sent a line over 65536 bytes; disconnecting it");
/// ```
pub fn warn(line: &str) {
    let now = std::time::Instant::now();
    let (started, written, unwritten) = WARNINGS.get();
    let (started, written) = match started {
        Some(started) if now.duration_since(started) < std::time::Duration::from_secs(1) => (started, written),
        _ => (now, 0),
    };
    if written >= WARNINGS_PER_SECOND {
        WARNINGS.set((Some(started), written, unwritten + 1));
        return;
    }
    match unwritten {
        0 => print_line(line),
        n => print_line(&format!("{line} ({n} similar lines not shown)")),
    }
    WARNINGS.set((Some(started), written + 1, 0));
}
