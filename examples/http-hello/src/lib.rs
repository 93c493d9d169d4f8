//! http-hello: an HTTP/1.1 server that answers `GET /` (and `HEAD /`) with
//! `Hello, world!`, `404` for any other path and `405` for other methods on
//! `/`. Connections are kept alive (HTTP/1.1's default, or HTTP/1.0 with
//! `Connection: keep-alive`) until the client sends `Connection: close`;
//! pipelined requests are answered in order, those of one read in one write.
//! Requests are parsed by `httparse`.
//!
//! Bounds (what a client meets past each; each closes only its connection):
//! - a request head (request line and headers) of at most [`MAX_HEAD`]
//!   bytes and [`MAX_HEADERS`] headers: else `431`;
//! - a body (which this server does not need) of at most [`MAX_BODY`]
//!   bytes by `Content-Length`, skipped as it arrives, never buffered: else
//!   `413`; a `Transfer-Encoding` body: `501`;
//! - anything `httparse` refuses, an HTTP/1.1 request without `Host`, or a
//!   bad `Content-Length`: `400`.
//!
//! Each of those answers says `Connection: close`, and the connection is
//! closed after it. A client that pipelines without reading meets
//! back-pressure: answers are written at most [`FLUSH_AT`] bytes at a time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_sdk::{Connection, Error, Service, export_service};

/// The longest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers one request may have.
pub const MAX_HEADERS: usize = 64;
/// The longest body a request may carry (skipped), in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Answers are written once this many bytes wait (and after each read).
pub const FLUSH_AT: usize = 16 * 1024;
/// The most connections at once; a further one gets `503` and is closed.
pub const MAX_CONNECTIONS: usize = 512;
/// After a last answer, the most bytes dropped while waiting for the
/// client's end of stream before closing anyway.
pub const MAX_LINGER: usize = 256 * 1024;

/// The body of `GET /`.
pub const HELLO: &[u8] = b"Hello, world!\n";

#[derive(Default)]
struct HttpHello {
    connections: RefCell<HashMap<u64, Rc<RefCell<Pending>>>>,
    date: DateHeader,
}

/// The `date` header every answer carries (RFC 9110: a server with a clock
/// sends one), formatted once a second, not once per answer.
struct DateHeader {
    second: Cell<u64>,
    line: Cell<DateLine>,
}

impl Default for DateHeader {
    fn default() -> Self {
        DateHeader { second: Cell::new(0), line: Cell::new([0; 37]) }
    }
}

/// `date: <IMF-fixdate>\r\n`: always 37 bytes (the date is fixed-width).
type DateLine = [u8; 37];

impl DateHeader {
    /// The `date` line for now.
    fn line(&self) -> DateLine {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second.get() || self.line.get()[0] == 0 {
            self.second.set(second);
            let text = format!("date: {}\r\n", httpdate::fmt_http_date(now));
            let mut line = [0; 37];
            line.copy_from_slice(text.as_bytes());
            self.line.set(line);
        }
        self.line.get()
    }
}

/// What a connection has sent that is not answered yet.
#[derive(Default)]
struct Pending {
    /// Bytes of requests not complete yet.
    head: Vec<u8>,
    /// Body bytes of the last request still to skip.
    skip: usize,
    /// The last answer is sent: what comes now is dropped until the end.
    closing: bool,
    /// Bytes dropped since.
    lingered: usize,
}

/// What to do with one request.
struct Answer {
    status: &'static str,
    body: &'static [u8],
    /// Send the body (not for `HEAD`).
    with_body: bool,
    extra_headers: &'static str,
    keep_alive: bool,
    /// An HTTP/1.0 client, told `connection: keep-alive` when it is kept.
    http_1_0: bool,
}

impl Answer {
    fn error(status: &'static str, body: &'static [u8]) -> Answer {
        Answer { status, body, with_body: true, extra_headers: "", keep_alive: false, http_1_0: false }
    }

    /// The answer's bytes; `date` is the `date: ...\r\n` line.
    fn encode(&self, date: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(date);
        out.extend_from_slice(b"content-type: text/plain\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.extra_headers.as_bytes());
        if !self.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if self.http_1_0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.with_body {
            out.extend_from_slice(self.body);
        }
    }
}

/// How much of `buf` the next request takes, and its answer; `None` until
/// its head is complete.
fn next_request(buf: &[u8]) -> Option<(usize, usize, Answer)> {
    // An answer that ends the connection: it takes the rest of `buf`.
    let refuse = |status, what| Some((buf.len(), 0, Answer::error(status, what)));
    const TOO_LARGE: &str = "431 Request Header Fields Too Large";
    // Not zeroed: httparse writes each header before it reads it.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return refuse(TOO_LARGE, b"Request head too large\n"),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return refuse(TOO_LARGE, b"Request head too large\n"),
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return refuse(TOO_LARGE, b"Too many headers\n"),
        Err(_) => return refuse("400 Bad Request", b"Bad request\n"),
    };
    let http_1_1 = request.version == Some(1);
    let (mut hosts, mut close, mut keep_alive, mut length, mut expect) = (0, false, false, None, false);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            expect = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            match parsed.and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return refuse("400 Bad Request", b"Bad Content-Length\n"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return refuse("501 Not Implemented", b"Transfer-Encoding is not supported\n");
        }
    }
    if (http_1_1 && hosts == 0) || hosts > 1 {
        return refuse("400 Bad Request", b"A request needs one Host header\n");
    }
    let body = length.unwrap_or(0);
    if body > MAX_BODY as u64 {
        return refuse("413 Content Too Large", b"Body too large\n");
    }
    // A client that waits for `100 Continue` before its body gets the final
    // answer instead, and the connection closes (RFC 9110, 10.1.1).
    let keep_alive = !close && (http_1_1 || keep_alive) && !(expect && body > 0);
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    let answer = match (method, path) {
        ("GET" | "HEAD", "/") => Answer {
            status: "200 OK",
            body: HELLO,
            with_body: method == "GET",
            extra_headers: "",
            keep_alive,
            http_1_0: !http_1_1,
        },
        (_, "/") => Answer {
            status: "405 Method Not Allowed",
            body: b"Method not allowed\n",
            with_body: method != "HEAD",
            extra_headers: "allow: GET, HEAD\r\n",
            keep_alive,
            http_1_0: !http_1_1,
        },
        _ => Answer {
            status: "404 Not Found",
            body: b"Not found\n",
            with_body: method != "HEAD",
            extra_headers: "",
            keep_alive,
            http_1_0: !http_1_1,
        },
    };
    Some((head_len, body as usize, answer))
}

impl Service for HttpHello {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        if self.connections.borrow().len() >= MAX_CONNECTIONS {
            portcullis_sdk::warn(&format!("http-hello: {MAX_CONNECTIONS} connections already; refusing one"));
            let answer = Answer::error("503 Service Unavailable", b"Too many connections\n");
            let mut out = Vec::new();
            answer.encode(&self.date.line(), &mut out);
            let _ = conn.write_all(&out).await;
            return conn.close();
        }
        self.connections.borrow_mut().insert(conn.id(), Rc::default());
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        let Some(pending) = self.connections.borrow().get(&conn.id()).cloned() else {
            return conn.close(); // refused in on_connect
        };
        if data.is_empty() {
            return conn.close();
        }
        if pending.borrow().closing {
            return linger(&pending, conn, data.len());
        }
        // The bytes to answer: what was left unfinished, then the new ones
        // past any body still being skipped (a body left to skip means
        // nothing after it was left).
        let joined: Vec<u8>;
        let bytes: &[u8] = {
            let mut p = pending.borrow_mut();
            let skipped = p.skip.min(data.len());
            p.skip -= skipped;
            let new = &data[skipped..];
            if !p.head.is_empty() && !new.contains(&b'\n') && p.head.len() + new.len() <= MAX_HEAD {
                // A head ends with a newline: no need to parse it again yet.
                p.head.extend_from_slice(new);
                return Ok(());
            }
            if p.head.is_empty() {
                new
            } else {
                let mut head = std::mem::take(&mut p.head);
                head.extend_from_slice(new);
                joined = head;
                &joined
            }
        };
        let mut at = 0;
        let mut out = Vec::with_capacity(256); // one answer without growing
        let date = self.date.line();
        while let Some((used, body, answer)) = next_request(&bytes[at..]) {
            answer.encode(&date, &mut out);
            if !answer.keep_alive {
                conn.write_all(&out).await?;
                // Close only after the client's bytes stop coming (or
                // enough of them were dropped): closing with bytes unread
                // would reset the connection and could lose this answer.
                pending.borrow_mut().closing = true;
                conn.shutdown_write()?;
                return linger(&pending, conn, bytes.len() - at);
            }
            at += used;
            let skipped = body.min(bytes.len() - at);
            at += skipped;
            if skipped < body {
                pending.borrow_mut().skip = body - skipped;
            }
            if out.len() >= FLUSH_AT {
                conn.write_all(&out).await?;
                out.clear();
            }
        }
        // What is left of an unfinished head, at its own size (an idle
        // connection keeps no buffer of its last burst).
        pending.borrow_mut().head = bytes[at..].to_vec();
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection) {
        self.connections.borrow_mut().remove(&conn.id());
    }
}

/// After a last answer: drops what the client still sends, and closes at
/// its end of stream or once [`MAX_LINGER`] bytes were dropped.
fn linger(pending: &RefCell<Pending>, conn: &Connection, dropped: usize) -> Result<(), Error> {
    let mut p = pending.borrow_mut();
    p.lingered += dropped;
    if p.lingered > MAX_LINGER {
        return conn.close();
    }
    Ok(())
}

export_service!(HttpHello);

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &str) -> (usize, usize, String, bool) {
        let (used, body, answer) = next_request(request.as_bytes()).expect("complete");
        let mut out = Vec::new();
        answer.encode(b"", &mut out);
        (used, body, String::from_utf8(out).unwrap(), answer.keep_alive)
    }

    #[test]
    fn hello_and_not_found() {
        let (used, _, text, keep) = answer("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /");
        assert_eq!(used, 27);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nHello, world!\n") && keep);
        let (_, _, text, _) = answer("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let (_, _, text, _) = answer("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.ends_with("content-length: 14\r\n\r\n"));
        let (_, _, text, _) = answer("DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 405") && text.contains("allow: GET, HEAD\r\n"));
    }

    #[test]
    fn keep_alive_by_version_and_header() {
        assert!(!answer("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").3);
        assert!(!answer("GET / HTTP/1.0\r\n\r\n").3);
        for line in ["GET /", "GET /nope", "DELETE /"] {
            let request = format!("{line} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
            let (_, _, text, keep) = answer(&request);
            assert!(keep && text.contains("connection: keep-alive\r\n"), "{request:?}: {text}");
        }
        assert!(!answer("GET / HTTP/1.1\r\nHost: x\r\n\r\n").2.contains("keep-alive"));
    }

    #[test]
    fn bodies_are_skipped_or_refused() {
        assert_eq!(answer("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").1, 5);
        for (request, status) in [
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", "413"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "501"),
            ("GET / HTTP/1.1\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", "405"),
            ("GARBAGE\r\n\r\n", "400"),
        ] {
            let (_, _, text, keep) = answer(request);
            assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{request:?}: {text}");
            assert!(!keep && text.contains("connection: close\r\n"));
        }
    }

    #[test]
    fn heads_are_bounded() {
        assert_eq!(next_request(b"GET / HTTP/1.1\r\nHost: x\r\n").map(|r| r.0), None);
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(next_request(long.as_bytes()).unwrap().2.status.starts_with("431"));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert!(next_request(many.as_bytes()).unwrap().2.status.starts_with("431"));
    }
}
