//! Text a guest chose, made fit for one host log line.
//!
//! A trap's message and backtrace carry what the component says of itself:
//! function and module names from its name section, any length, any
//! characters. Written as they are, a name holding a line break writes a
//! second line that reads like the host's own (`INFO listening on ...`), and
//! twenty 100 KB names make a 2 MB line. Everything a host line takes from a
//! guest goes through here: control characters and line breaks are escaped
//! (`\n`, `\u{1b}`), each item is cut at [`MAX_ITEM`] bytes and a whole
//! description at [`MAX_LINE`].

use std::fmt::Write;

/// The most bytes of one guest-chosen item (a function name, a message).
pub const MAX_ITEM: usize = 256;
/// The most bytes of everything a guest chose in one host line.
pub const MAX_LINE: usize = 4096;
/// The most backtrace frames a trap line names.
pub const MAX_FRAMES: usize = 16;

/// `text` with every control character, line break and bidirectional
/// formatting character escaped as Rust writes them (`\n`, `\u{202e}`), cut
/// at `max` bytes (`... (N more bytes)`).
///
/// ```
/// use portcullis::guest_text::escape;
/// assert_eq!(escape("main\nINFO forged", 64), r"main\nINFO forged");
/// assert_eq!(escape(&"x".repeat(100), 10), "xxxxxxxxxx... (90 more bytes)");
/// ```
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for (at, c) in text.char_indices() {
        if out.len() >= max {
            let _ = write!(out, "... ({} more bytes)", text.len() - at);
            break;
        }
        if c.is_control() || is_format_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that change how the rest of a line reads (line and paragraph
/// separators, bidirectional overrides and isolates) though not control
/// characters to Rust.
fn is_format_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// An error that may come from a guest (a trap, a failed instantiation), as
/// one line: its causes joined by `: `, a wasm backtrace as `backtrace: #0
/// module!function, #1 ...` (at most [`MAX_FRAMES`] frames), every part
/// escaped and bounded (see [`escape`]), the whole at most [`MAX_LINE`]
/// bytes.
///
/// ```
/// let error = wasmtime::Error::msg("wasm trap: unreachable\n  0: forged").context("instantiating echo");
/// let line = portcullis::guest_text::error_line(&error);
/// assert_eq!(line, r"instantiating echo: wasm trap: unreachable\n  0: forged");
/// ```
pub fn error_line(error: &wasmtime::Error) -> String {
    line(error.chain(), error.downcast_ref::<wasmtime::WasmBacktrace>())
}

/// [`error_line`] for an `anyhow` error.
pub fn anyhow_line(error: &anyhow::Error) -> String {
    line(error.chain(), error.downcast_ref::<wasmtime::WasmBacktrace>())
}

/// How wasmtime's `WasmBacktrace` starts its text, in an error's chain.
const BACKTRACE_HEADER: &str = "error while executing at wasm backtrace:";

fn line<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
    backtrace: Option<&wasmtime::WasmBacktrace>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        if line.len() >= MAX_LINE {
            break;
        }
        // Only the start of a cause is made: a 2 MB backtrace is not.
        let text = bounded_text(cause, MAX_ITEM * 4);
        if backtrace.is_some() && text.starts_with(BACKTRACE_HEADER) {
            continue; // written last, after what happened
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&escape(&text, MAX_ITEM * 4));
    }
    if let Some(backtrace) = backtrace {
        line.push_str("; ");
        line.push_str(&backtrace_text(backtrace));
    }
    escape_cut(line)
}

/// `value`'s text, stopped a little past `max` bytes.
fn bounded_text(value: &dyn std::fmt::Display, max: usize) -> String {
    struct Bounded(String, usize);
    impl Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.1.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            self.0.push_str("...");
            Err(std::fmt::Error)
        }
    }
    let mut out = Bounded(String::new(), max);
    let _ = write!(out, "{value}");
    out.0
}

/// `backtrace: #0 module!function+0x1f, ...`, innermost first.
fn backtrace_text(backtrace: &wasmtime::WasmBacktrace) -> String {
    let frames = backtrace.frames();
    let mut text = String::from("backtrace:");
    for (i, frame) in frames.iter().take(MAX_FRAMES).enumerate() {
        let module = frame.module().name().map_or_else(|| "<module>".to_string(), |m| escape(m, MAX_ITEM));
        let function = match frame.func_name() {
            Some(name) => escape(&demangled(name), MAX_ITEM),
            None => format!("<function {}>", frame.func_index()),
        };
        let _ = write!(text, "{} #{i} {module}!{function}", if i == 0 { "" } else { "," });
        if let Some(offset) = frame.func_offset() {
            let _ = write!(text, "+{offset:#x}");
        }
    }
    if frames.len() > MAX_FRAMES {
        let _ = write!(text, ", ... ({} more frames)", frames.len() - MAX_FRAMES);
    }
    text
}

/// A Rust symbol demangled, without its hash (`std::sys::abort_internal`);
/// other names as they are. Only names of a sensible length are demangled.
fn demangled(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(symbol) if name.len() <= 1024 => format!("{symbol:#}"),
        _ => name.to_string(),
    }
}

/// `line` (already escaped) cut at [`MAX_LINE`] bytes, on a character boundary.
fn escape_cut(mut line: String) -> String {
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let more = line.len() - end;
        line.truncate(end);
        let _ = write!(line, "... ({more} more bytes)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_line_break_or_control_character_survives() {
        for text in ["a\nb", "a\r\nb", "a\u{1b}[2Jb", "a\u{2028}b", "a\u{202e}b", "a\u{85}b", "a\0b", "a\tb"] {
            let escaped = escape(text, 64);
            assert!(!escaped.chars().any(|c| c.is_control() || is_format_control(c)), "{text:?} -> {escaped:?}");
            assert!(escaped.starts_with('a') && escaped.ends_with('b'), "{escaped:?}");
        }
        assert_eq!(escape("naïve ünïcode", 64), "naïve ünïcode", "printable text is kept");
    }

    #[test]
    fn items_and_lines_are_bounded_on_character_boundaries() {
        let name = "ü".repeat(100_000);
        let escaped = escape(&name, MAX_ITEM);
        assert!(escaped.len() <= MAX_ITEM + 32, "{}", escaped.len());
        assert!(escaped.ends_with("more bytes)"));
        let mut error = wasmtime::Error::msg("\n".repeat(100_000));
        for _ in 0..50 {
            error = error.context("x".repeat(10_000));
        }
        let line = error_line(&error);
        assert!(line.len() <= MAX_LINE + 32, "{}", line.len());
        assert!(!line.contains('\n'));
    }
}
