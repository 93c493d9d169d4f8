//! RESP2 on the wire: the request decoder (multibulk frames and inline
//! commands, fed as bytes arrive) and the reply encoder.
//!
//! The decoder is incremental so that a request split across many reads
//! costs each byte one look, whatever the split: a bulk's body is waited for
//! by length, and an inline line's search for its newline resumes where it
//! stopped. What one unfinished request may hold is bounded ([`MAX_REQUEST`]
//! and the limits beside it); past a bound the decoder answers with Redis's
//! `Protocol error` and the service closes that connection.

use std::rc::Rc;

/// The longest bulk string a request may carry, in bytes (Redis's
/// `proto-max-bulk-len`, which defaults to 512 MB there).
pub const MAX_BULK_LEN: usize = 512 * 1024;
/// The most arguments one request may have, the command name included.
pub const MAX_ARGS: usize = 4096;
/// The longest inline command line, in bytes (as Redis's 64 KiB).
pub const MAX_INLINE: usize = 64 * 1024;
/// The most bytes one unfinished request may hold, its arguments counted
/// with [`ARG_OVERHEAD`] each.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// What an argument costs beyond its bytes, for [`MAX_REQUEST`].
const ARG_OVERHEAD: usize = 32;
/// The longest `*N` or `$N` header line, CRLF included.
const MAX_HEADER_LINE: usize = 32;

/// Why a connection's request cannot be read: answered as
/// `-ERR Protocol error: ...`, then the connection is closed.
#[derive(Debug, PartialEq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(what: impl Into<String>) -> Self {
        ProtocolError(what.into())
    }
}

/// A multibulk request whose arguments are still arriving. Its bytes stay
/// in the decoder's buffer from `start` on, and its arguments are spans of
/// them: nothing is copied until a command keeps a value.
struct Multibulk {
    /// Where the request's `*N` line starts in the buffer.
    start: usize,
    remaining: usize,
    /// The length of the bulk whose header has been read, body not yet.
    bulk_len: Option<usize>,
}

/// Turns the bytes of one connection into requests (each a list of
/// arguments, the command name first).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the bytes not yet decoded start in `buf`.
    pos: usize,
    pending: Option<Multibulk>,
    /// The pending multibulk's arguments so far: start and end in `buf`
    /// (kept between requests, so that a request allocates no list of its own).
    spans: Vec<(usize, usize)>,
    /// How far past `pos` an inline line was already searched for `\n`.
    inline_scanned: usize,
    /// The words of the last inline request (unquoted, so copied).
    inline_words: Vec<Vec<u8>>,
}

impl Decoder {
    /// Adds bytes read from the connection (first dropping those of
    /// requests already decoded, when they are at least half the buffer).
    pub fn feed(&mut self, data: &[u8]) {
        let keep_from = self.pending.as_ref().map_or(self.pos, |m| m.start);
        if keep_from > 0 && keep_from >= self.buf.len() / 2 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from;
            if let Some(pending) = &mut self.pending {
                pending.start -= keep_from;
                for (from, to) in &mut self.spans {
                    *from -= keep_from;
                    *to -= keep_from;
                }
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held for requests not finished yet, each argument counted with
    /// [`ARG_OVERHEAD`] more (what counts against [`MAX_REQUEST`] and the
    /// service's budget for all connections).
    pub fn held(&self) -> usize {
        match &self.pending {
            Some(pending) => self.buf.len() - pending.start + self.spans.len() * ARG_OVERHEAD,
            None => self.buf.len() - self.pos,
        }
    }

    /// Bytes the decoder has allocated (what counts against the service's
    /// `maxmemory-clients`).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
            + self.spans.capacity() * std::mem::size_of::<(usize, usize)>()
            + self.inline_words.iter().map(|w| w.capacity() + ARG_OVERHEAD).sum::<usize>()
    }

    /// Frees what the decoder holds beyond a few KiB when no request is
    /// unfinished: an idle connection keeps nothing of its last burst.
    pub fn release(&mut self) {
        const KEEP: usize = 4096;
        self.inline_words = Vec::new();
        if self.pending.is_some() || self.pos != self.buf.len() {
            return;
        }
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        if self.spans.capacity() > 64 {
            self.spans = Vec::new();
        }
    }

    /// The next complete request (its arguments, borrowed from the decoder
    /// until the next call), `None` until more bytes arrive, or why the
    /// bytes are not RESP. Empty requests (`*0`, blank lines) are skipped.
    pub fn next_request(&mut self) -> Result<Option<Vec<&[u8]>>, ProtocolError> {
        loop {
            if self.pending.is_none() {
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                if self.buf[self.pos] != b'*' {
                    if !self.inline()? {
                        return Ok(None);
                    }
                    if self.inline_words.is_empty() {
                        continue;
                    }
                    return Ok(Some(self.inline_words.iter().map(Vec::as_slice).collect()));
                }
                let start = self.pos;
                let Some(count) = self.header_line("mbulk count")? else { return self.check_held() };
                match parse_i64(count) {
                    None => return Err(ProtocolError::new("invalid multibulk length")),
                    Some(n) if n <= 0 => continue,
                    Some(n) if n as u64 > MAX_ARGS as u64 => {
                        return Err(ProtocolError::new("invalid multibulk length"));
                    }
                    Some(n) => {
                        self.spans.clear();
                        self.pending = Some(Multibulk { start, remaining: n as usize, bulk_len: None });
                    }
                }
            }
            if !self.bulks()? {
                return self.check_held();
            }
            self.pending = None;
            return Ok(Some(self.spans.iter().map(|&(from, to)| &self.buf[from..to]).collect()));
        }
    }

    fn check_held<T>(&self) -> Result<Option<T>, ProtocolError> {
        if self.held() > MAX_REQUEST {
            return Err(ProtocolError::new(format!("request larger than {MAX_REQUEST} bytes")));
        }
        Ok(None)
    }

    /// Reads the pending multibulk's arguments as far as the bytes go;
    /// whether it is complete.
    fn bulks(&mut self) -> Result<bool, ProtocolError> {
        loop {
            let bulk_len = match self.pending.as_ref().expect("a pending multibulk").bulk_len {
                Some(len) => len,
                None => {
                    if self.pos == self.buf.len() {
                        return Ok(false);
                    }
                    let first = self.buf[self.pos];
                    if first != b'$' {
                        return Err(ProtocolError::new(format!("expected '$', got '{}'", printable(first))));
                    }
                    let Some(line) = self.header_line("bulk count")? else { return Ok(false) };
                    let len = match parse_i64(line) {
                        Some(n) if (0..=MAX_BULK_LEN as i64).contains(&n) => n as usize,
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    };
                    self.pending.as_mut().expect("pending").bulk_len = Some(len);
                    len
                }
            };
            if self.buf.len() - self.pos < bulk_len + 2 {
                return Ok(false);
            }
            if &self.buf[self.pos + bulk_len..self.pos + bulk_len + 2] != b"\r\n" {
                return Err(ProtocolError::new("expected CRLF after a bulk string"));
            }
            let pending = self.pending.as_mut().expect("pending");
            self.spans.push((self.pos, self.pos + bulk_len));
            pending.bulk_len = None;
            pending.remaining -= 1;
            self.pos += bulk_len + 2;
            if pending.remaining == 0 {
                return Ok(true);
            }
        }
    }

    /// A `*N` / `$N` line without its CRLF, consumed; `None` until complete.
    fn header_line(&mut self, what: &str) -> Result<Option<&[u8]>, ProtocolError> {
        let window = &self.buf[self.pos..];
        let window = &window[..window.len().min(MAX_HEADER_LINE)];
        match window.iter().position(|&b| b == b'\r').filter(|&end| window.get(end + 1) == Some(&b'\n')) {
            Some(end) => {
                let start = self.pos + 1;
                self.pos += end + 2;
                Ok(Some(&self.buf[start..start + end - 1]))
            }
            None if window.len() == MAX_HEADER_LINE => Err(ProtocolError::new(format!("too big {what} string"))),
            None => Ok(None),
        }
    }

    /// An inline command (a line of words, Redis's quoting rules) into
    /// `inline_words`, consumed; whether its newline had arrived.
    fn inline(&mut self) -> Result<bool, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let Some(found) = rest[self.inline_scanned..].iter().position(|&b| b == b'\n') else {
            self.inline_scanned = rest.len();
            if rest.len() > MAX_INLINE {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(false);
        };
        let end = self.inline_scanned + found;
        self.inline_scanned = 0;
        if end > MAX_INLINE {
            return Err(ProtocolError::new("too big inline request"));
        }
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        let words = split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        if words.len() > MAX_ARGS {
            return Err(ProtocolError::new("invalid multibulk length"));
        }
        self.inline_words = words;
        self.pos += end + 1;
        Ok(true)
    }
}

/// An integer as Redis's `string2ll` reads one: an optional `-`, then digits
/// with no leading zero (`0` alone is fine; `-0`, `+1`, ` 1`, `01` are not).
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] if negative => return None,
        [b'0'] => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    // 19 digits always fit a u64 (no overflow check per digit: on wasm32 an
    // i64 `checked_mul` is a 128-bit multiply in software); 20 never fit an i64.
    if digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0'));
    if negative { 0i64.checked_sub_unsigned(magnitude) } else { i64::try_from(magnitude).ok() }
}

/// Splits an inline line into arguments as Redis's `sdssplitargs` does:
/// words between whitespace; `"..."` with `\n \r \t \b \a \\ \" \xHH`
/// escapes; `'...'` with `\'`. A closing quote must end its word. `None`:
/// unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut word = Vec::new();
        let mut quote = None;
        loop {
            let Some(&c) = line.get(i) else {
                if quote.is_some() {
                    return None;
                }
                break;
            };
            match quote {
                None if is_space(c) => break,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None => word.push(c),
                Some(q) if c == q => {
                    if line.get(i + 1).is_some_and(|&next| !is_space(next)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                Some(b'"')
                    if c == b'\\' && line.get(i + 1) == Some(&b'x') && hex_pair(line.get(i + 2..i + 4)).is_some() =>
                {
                    word.push(hex_pair(line.get(i + 2..i + 4)).expect("checked"));
                    i += 3;
                }
                Some(b'"') if c == b'\\' && i + 1 < line.len() => {
                    i += 1;
                    word.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                }
                Some(b'\'') if c == b'\\' && line.get(i + 1) == Some(&b'\'') => {
                    word.push(b'\'');
                    i += 1;
                }
                Some(_) => word.push(c),
            }
            i += 1;
        }
        args.push(word);
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = std::str::from_utf8(pair?).ok()?;
    u8::from_str_radix(pair, 16).ok()
}

fn printable(c: u8) -> char {
    if c.is_ascii_graphic() || c == b' ' { c as char } else { '?' }
}

/// One reply, built while the command runs (values shared with the store,
/// not copied) and encoded after it.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// `+OK`, `+PONG`...
    Simple(&'static str),
    /// `-ERR ...`: the text after the `-`, its line breaks made spaces.
    Error(String),
    Int(i64),
    Bulk(Rc<[u8]>),
    /// `$-1`.
    Nil,
    Array(Vec<Reply>),
    /// A reply encoded already (`COMMAND`'s, made once).
    Encoded(Rc<[u8]>),
}

impl Reply {
    pub fn bulk(bytes: &[u8]) -> Reply {
        Reply::Bulk(Rc::from(bytes))
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// Appends the reply's RESP2 bytes to `out`. An error's CR and LF become
    /// spaces (they would end the line early and let a client's words forge
    /// a reply).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(text) => {
                out.push(b'-');
                out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => {
                out.push(b':');
                out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(bytes) => {
                Reply::bulk_header(bytes.len(), out);
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                Reply::array_header(items.len(), out);
                for item in items {
                    item.encode(out);
                }
            }
            Reply::Encoded(bytes) => out.extend_from_slice(bytes),
        }
    }

    pub fn bulk_header(len: usize, out: &mut Vec<u8>) {
        Reply::header(b'$', len, out);
    }

    pub fn array_header(len: usize, out: &mut Vec<u8>) {
        Reply::header(b'*', len, out);
    }

    fn header(kind: u8, len: usize, out: &mut Vec<u8>) {
        out.push(kind);
        out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn all(decoder: &mut Decoder) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(request) = decoder.next_request()? {
            out.push(request.iter().map(|arg| arg.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn a_request_split_at_every_byte_decodes_once() {
        let wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let mut decoder = Decoder::default();
        let mut got = Vec::new();
        for byte in wire {
            decoder.feed(&[*byte]);
            got.extend(all(&mut decoder).unwrap());
        }
        assert_eq!(got, vec![args(&["SET", "k", "hello"]), args(&["PING"]), args(&["PING"])]);
        assert_eq!(decoder.held(), 0);
    }

    #[test]
    fn empty_bulk_strings_are_arguments() {
        let mut decoder = Decoder::default();
        decoder.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(all(&mut decoder).unwrap(), vec![args(&["SET", "k", ""])]);
    }

    #[test]
    fn a_pending_request_survives_the_buffer_moving() {
        let mut decoder = Decoder::default();
        decoder.feed(&b"PING\r\n".repeat(100));
        decoder.feed(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel");
        assert_eq!(all(&mut decoder).unwrap().len(), 100);
        decoder.feed(b"lo\r\n");
        assert_eq!(all(&mut decoder).unwrap(), vec![args(&["ECHO", "hello"])]);
        assert_eq!(decoder.held(), 0);
    }

    #[test]
    fn many_requests_in_one_read() {
        let mut decoder = Decoder::default();
        decoder.feed(&b"*1\r\n$4\r\nPING\r\n".repeat(100));
        assert_eq!(all(&mut decoder).unwrap().len(), 100);
    }

    #[test]
    fn inline_commands_follow_redis_quoting() {
        assert_eq!(split_args(b"  set  k 'a b'  ").unwrap(), args(&["set", "k", "a b"]));
        assert_eq!(split_args(b"echo \"x\\x41\\n\"").unwrap(), vec![b"echo".to_vec(), b"xA\n".to_vec()]);
        assert_eq!(split_args(b"echo 'it\\'s'").unwrap(), args(&["echo", "it's"]));
        assert_eq!(split_args(b"echo \"open"), None);
        assert_eq!(split_args(b"echo \"a\"b"), None);
        assert_eq!(split_args(b"").unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn empty_requests_are_skipped() {
        let mut decoder = Decoder::default();
        decoder.feed(b"\r\n*0\r\n*-1\r\n\nPING\r\n");
        assert_eq!(all(&mut decoder).unwrap(), vec![args(&["PING"])]);
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        for (wire, expected) in [
            (&b"*2\r\n:1\r\n"[..], "expected '$', got ':'"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$3\r\nabcde\r\n", "expected CRLF after a bulk string"),
            (b"*99999999\r\n", "invalid multibulk length"),
            (b"*1\r\n$999999999\r\n", "invalid bulk length"),
            (b"*1\r\n$000000000000000000000000000000000000001\r\n", "too big bulk count string"),
            (b"echo \"unbalanced\r\n", "unbalanced quotes in request"),
        ] {
            let mut decoder = Decoder::default();
            decoder.feed(wire);
            assert_eq!(all(&mut decoder).unwrap_err().0, expected, "{wire:?}");
        }
    }

    #[test]
    fn an_unfinished_request_is_bounded() {
        let mut decoder = Decoder::default();
        decoder.feed(format!("*{MAX_ARGS}\r\n").as_bytes());
        let bulk = format!("${MAX_BULK_LEN}\r\n{}\r\n", "x".repeat(MAX_BULK_LEN));
        decoder.feed(bulk.as_bytes());
        assert_eq!(all(&mut decoder).unwrap(), Vec::<Vec<Vec<u8>>>::new());
        decoder.feed(bulk.as_bytes());
        decoder.feed(b"$1\r\n");
        assert!(all(&mut decoder).unwrap_err().0.starts_with("request larger than"));

        let mut decoder = Decoder::default();
        decoder.feed(&vec![b'a'; MAX_INLINE + 1]);
        assert_eq!(all(&mut decoder).unwrap_err().0, "too big inline request");
    }

    #[test]
    fn an_idle_decoder_keeps_nothing_of_its_last_burst() {
        let mut decoder = Decoder::default();
        let big = format!("*2\r\n$4\r\nECHO\r\n$500000\r\n{}\r\n", "x".repeat(500_000));
        decoder.feed(big.as_bytes());
        decoder.feed(b"*1\r\n$4\r\nPI");
        assert_eq!(all(&mut decoder).unwrap().len(), 1);
        decoder.release(); // a request is unfinished: kept
        assert!(decoder.allocated() >= 500_000);
        decoder.feed(b"NG\r\n");
        assert_eq!(all(&mut decoder).unwrap(), vec![args(&["PING"])]);
        decoder.release();
        assert!(decoder.allocated() < 8192, "{}", decoder.allocated());
    }

    #[test]
    fn integers_are_read_strictly() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"-9223372036854775809"), None);
        assert_eq!(parse_i64(b"99999999999999999999"), None);
        for bad in [&b""[..], b"-", b"-0", b"+1", b" 1", b"01", b"1.5", b"9223372036854775808", b"1e3"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_cannot_forge_replies() {
        let mut out = Vec::new();
        Reply::error("ERR unknown command 'a\r\n+OK'").encode(&mut out);
        assert_eq!(out, b"-ERR unknown command 'a  +OK'\r\n");
    }
}
