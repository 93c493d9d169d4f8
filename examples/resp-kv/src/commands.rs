//! The commands: one table of names and arities (which `COMMAND` also
//! reports) and one function each. Replies and errors are worded as Redis 7
//! words them, so clients written for Redis understand them.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::resp::{Reply, parse_i64};
use crate::store::{Clock, Deadline, OutOfMemory, Store, Ttl};

/// Which command a [`Spec`] describes (what [`execute`] dispatches on).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Name {
    Ping,
    Echo,
    Set,
    Get,
    Del,
    Exists,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    MGet,
    MSet,
    Expire,
    PExpire,
    Ttl,
    PTtl,
    DbSize,
    FlushAll,
    Command,
    Hello,
    Select,
    Client,
    Config,
    Quit,
}

/// One command as `COMMAND` describes it: arity (negative: at least that
/// many arguments, the name included), flags, and where its keys are.
pub struct Spec {
    pub command: Name,
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub keys: (i64, i64, i64),
}

const fn spec(
    command: Name,
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec { command, name, arity, flags, keys }
}

const WRITE: &[&str] = &["write", "denyoom"];
const READ: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["loading", "stale", "fast"];
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const EVERY_KEY: (i64, i64, i64) = (1, -1, 1);
const NO_KEYS: (i64, i64, i64) = (0, 0, 0);

/// Every command this service knows.
pub const COMMANDS: &[Spec] = &[
    spec(Name::Ping, "ping", -1, CONN, NO_KEYS),
    spec(Name::Echo, "echo", 2, CONN, NO_KEYS),
    spec(Name::Set, "set", -3, WRITE, ONE_KEY),
    spec(Name::Get, "get", 2, READ, ONE_KEY),
    spec(Name::Del, "del", -2, &["write"], EVERY_KEY),
    spec(Name::Exists, "exists", -2, READ, EVERY_KEY),
    spec(Name::Incr, "incr", 2, WRITE, ONE_KEY),
    spec(Name::Decr, "decr", 2, WRITE, ONE_KEY),
    spec(Name::IncrBy, "incrby", 3, WRITE, ONE_KEY),
    spec(Name::DecrBy, "decrby", 3, WRITE, ONE_KEY),
    spec(Name::MGet, "mget", -2, READ, EVERY_KEY),
    spec(Name::MSet, "mset", -3, WRITE, (1, -1, 2)),
    spec(Name::Expire, "expire", -3, &["write", "fast"], ONE_KEY),
    spec(Name::PExpire, "pexpire", -3, &["write", "fast"], ONE_KEY),
    spec(Name::Ttl, "ttl", 2, READ, ONE_KEY),
    spec(Name::PTtl, "pttl", 2, READ, ONE_KEY),
    spec(Name::DbSize, "dbsize", 1, READ, NO_KEYS),
    spec(Name::FlushAll, "flushall", -1, &["write"], NO_KEYS),
    spec(Name::Command, "command", -1, &["loading", "stale"], NO_KEYS),
    spec(Name::Hello, "hello", -1, CONN, NO_KEYS),
    spec(Name::Select, "select", 2, CONN, NO_KEYS),
    spec(Name::Client, "client", -2, CONN, NO_KEYS),
    spec(Name::Config, "config", -2, &["admin", "loading", "stale"], NO_KEYS),
    spec(Name::Quit, "quit", -1, CONN, NO_KEYS),
];

/// What the connection does after a command.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Reply(Reply),
    /// Send the reply, then close the connection (`QUIT`).
    ReplyAndClose(Reply),
    /// The request could not be read: answer `-ERR Protocol error: ...`
    /// and close the connection.
    Refuse(String),
}

/// What a command runs against.
pub struct Context<'a> {
    pub store: &'a mut Store,
    pub now: &'a Clock,
    pub connection_id: u64,
}

/// The longest reply one command may make, in bytes: an `MGET` whose values
/// add up to more gets an error instead (a reply is held whole until sent).
pub const MAX_REPLY: usize = 8 * 1024 * 1024;

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// Runs one request (`args[0]` is the command name, any case).
pub fn execute(args: &[&[u8]], cx: &mut Context) -> Outcome {
    let Some(spec) = COMMANDS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(args[0])) else {
        return Outcome::Reply(unknown_command(&String::from_utf8_lossy(args[0]), &args[1..]));
    };
    let count = args.len() as i64;
    if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
        return Outcome::Reply(wrong_arity(spec.name));
    }
    let a = &args[1..];
    let reply = match spec.command {
        Name::Ping => match a {
            [] => Reply::Simple("PONG"),
            [message] => Reply::bulk(message),
            _ => wrong_arity("ping"),
        },
        Name::Echo => Reply::bulk(a[0]),
        Name::Set => set(a, cx),
        Name::Get => cx.store.get(a[0], cx.now).map_or(Reply::Nil, Reply::Bulk),
        Name::Del => Reply::Int(a.iter().filter(|key| cx.store.remove(key)).count() as i64),
        Name::Exists => Reply::Int(a.iter().filter(|key| cx.store.contains(key, cx.now)).count() as i64),
        Name::Incr => add(a[0], 1, cx),
        Name::Decr => add(a[0], -1, cx),
        Name::IncrBy => match parse_i64(a[1]) {
            Some(by) => add(a[0], by, cx),
            None => Reply::error(NOT_AN_INTEGER),
        },
        Name::DecrBy => match parse_i64(a[1]).map(i64::checked_neg) {
            Some(Some(by)) => add(a[0], by, cx),
            Some(None) => Reply::error("ERR decrement would overflow"),
            None => Reply::error(NOT_AN_INTEGER),
        },
        Name::MGet => mget(a, cx),
        Name::MSet => mset(a, cx),
        Name::Expire => expire(a, 1000, "expire", cx),
        Name::PExpire => expire(a, 1, "pexpire", cx),
        Name::Ttl => ttl(a[0], 1000, cx),
        Name::PTtl => ttl(a[0], 1, cx),
        Name::DbSize => Reply::Int(cx.store.key_count() as i64),
        Name::FlushAll => match a {
            [] => flush(cx),
            [mode] if mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async") => flush(cx),
            _ => Reply::error(SYNTAX),
        },
        Name::Command => command(a),
        Name::Hello => hello(a, cx),
        Name::Select => match parse_i64(a[0]) {
            Some(0) => Reply::Simple("OK"),
            Some(_) => Reply::error("ERR DB index is out of range"),
            None => Reply::error(NOT_AN_INTEGER),
        },
        Name::Client => client(a, cx),
        Name::Config => config(a, cx),
        Name::Quit => return Outcome::ReplyAndClose(Reply::Simple("OK")),
    };
    Outcome::Reply(reply)
}

/// Redis 7's wording, the arguments quoted up to 128 bytes in all.
fn unknown_command(name: &str, args: &[&[u8]]) -> Reply {
    let mut quoted = String::new();
    for arg in args {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        let text = String::from_utf8_lossy(arg);
        quoted.push_str(&format!("'{}' ", truncate(&text, room)));
    }
    Reply::error(format!("ERR unknown command '{}', with args beginning with: {quoted}", truncate(name, 128)))
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn unknown_subcommand(sub: &[u8], command: &str) -> Reply {
    let sub = String::from_utf8_lossy(sub);
    Reply::error(format!("ERR unknown subcommand '{}'. Try {command} HELP.", truncate(&sub, 128)))
}

/// `now + amount × unit_ms` milliseconds, or `None` when that overflows, or
/// when the deadline as Unix milliseconds would not fit an i64 (Redis's
/// limit).
fn deadline(now: Instant, amount: i64, unit_ms: i64) -> Option<Instant> {
    let ms = amount.checked_mul(unit_ms)?;
    let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    if i128::from(ms) + unix_ms as i128 > i128::from(i64::MAX) {
        return None;
    }
    now.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))
}

/// `SET key value [NX | XX] [GET] [EX seconds | PX milliseconds | KEEPTTL]`.
fn set(a: &[&[u8]], cx: &mut Context) -> Reply {
    let (key, value) = (a[0], a[1]);
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expiry: Option<(i64, i64)> = None;
    let mut i = 2;
    while i < a.len() {
        let option = a[i].to_ascii_uppercase();
        let next = a.get(i + 1);
        match option.as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if expiry.is_none() => keep_ttl = true,
            b"EX" | b"PX" if expiry.is_none() && !keep_ttl && next.is_some() => {
                let Some(amount) = parse_i64(next.expect("checked")) else { return Reply::error(NOT_AN_INTEGER) };
                expiry = Some((amount, if option == b"EX" { 1000 } else { 1 }));
                i += 1;
            }
            _ => return Reply::error(SYNTAX),
        }
        i += 1;
    }
    let ttl = match expiry {
        None if keep_ttl => Ttl::Keep,
        None => Ttl::Clear,
        Some((amount, unit)) => match deadline(cx.now.now(), amount, unit) {
            Some(at) if amount > 0 => Ttl::At(at),
            _ => return Reply::error("ERR invalid expire time in 'set' command"),
        },
    };
    let old = if nx || xx || get { cx.store.get(key, cx.now) } else { None };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return if get { old.map_or(Reply::Nil, Reply::Bulk) } else { Reply::Nil };
    }
    match cx.store.set(key, Rc::from(value), ttl, cx.now) {
        Err(OutOfMemory) => Reply::error(OOM),
        Ok(()) if get => old.map_or(Reply::Nil, Reply::Bulk),
        Ok(()) => Reply::Simple("OK"),
    }
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the key's integer plus `by`; a
/// missing key counts as 0; the time to live stays.
fn add(key: &[u8], by: i64, cx: &mut Context) -> Reply {
    let current = match cx.store.get(key, cx.now) {
        None => 0,
        Some(value) => match parse_i64(&value) {
            Some(n) => n,
            None => return Reply::error(NOT_AN_INTEGER),
        },
    };
    let Some(sum) = current.checked_add(by) else {
        return Reply::error("ERR increment or decrement would overflow");
    };
    match cx.store.set(key, Rc::from(sum.to_string().as_bytes()), Ttl::Keep, cx.now) {
        Ok(()) => Reply::Int(sum),
        Err(OutOfMemory) => Reply::error(OOM),
    }
}

/// `MGET key [key ...]`: the values, each `nil` if missing; an error if
/// they add up to more than [`MAX_REPLY`].
fn mget(a: &[&[u8]], cx: &mut Context) -> Reply {
    let values: Vec<Reply> = a.iter().map(|key| cx.store.get(key, cx.now).map_or(Reply::Nil, Reply::Bulk)).collect();
    let size: usize = values.iter().map(|v| if let Reply::Bulk(b) = v { b.len() + 16 } else { 5 }).sum();
    if size > MAX_REPLY {
        return Reply::error(format!(
            "ERR the reply would be {size} bytes, over the {MAX_REPLY}-byte limit; ask for fewer keys"
        ));
    }
    Reply::Array(values)
}

/// `MSET key value [key value ...]`: all or nothing.
fn mset(a: &[&[u8]], cx: &mut Context) -> Reply {
    if !a.len().is_multiple_of(2) {
        return wrong_arity("mset");
    }
    let pairs: Vec<(&[u8], Rc<[u8]>)> = a.chunks(2).map(|pair| (pair[0], Rc::from(pair[1]))).collect();
    match cx.store.set_all(pairs, cx.now) {
        Ok(()) => Reply::Simple("OK"),
        Err(OutOfMemory) => Reply::error(OOM),
    }
}

/// `EXPIRE key seconds [NX | XX | GT | LT]` (`PEXPIRE`: milliseconds). A
/// time in the past deletes the key.
fn expire(a: &[&[u8]], unit_ms: i64, name: &str, cx: &mut Context) -> Reply {
    let Some(amount) = parse_i64(a[1]) else { return Reply::error(NOT_AN_INTEGER) };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &a[2..] {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                let option = String::from_utf8_lossy(&option[..option.len().min(128)]).into_owned();
                return Reply::error(format!("ERR Unsupported option {}", truncate(&option, 128)));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::error("ERR GT and LT options at the same time are not compatible");
    }
    let at = if amount <= 0 {
        None
    } else {
        match deadline(cx.now.now(), amount, unit_ms) {
            Some(at) => Some(at),
            None => return Reply::error(format!("ERR invalid expire time in '{name}' command")),
        }
    };
    if amount.checked_mul(unit_ms).is_none() {
        return Reply::error(format!("ERR invalid expire time in '{name}' command"));
    }
    let Some(current) = cx.store.deadline(a[0], cx.now) else { return Reply::Int(0) };
    let current = match current {
        Deadline::Never => None,
        Deadline::At(at) => Some(at),
    };
    let allowed = match (current, at) {
        _ if nx => current.is_none(),
        _ if xx && current.is_none() => false,
        (None, _) => !gt,
        (Some(current), Some(new)) if gt => new > current,
        (Some(current), Some(new)) if lt => new < current,
        (Some(_), None) => !gt,
        _ => true,
    };
    if !allowed {
        return Reply::Int(0);
    }
    match at {
        None => cx.store.remove(a[0]),
        Some(at) => cx.store.set_deadline(a[0], Some(at)),
    };
    Reply::Int(1)
}

/// `TTL` (seconds, rounded) and `PTTL`: -2 for no key, -1 for no deadline.
fn ttl(key: &[u8], unit_ms: u128, cx: &mut Context) -> Reply {
    match cx.store.deadline(key, cx.now) {
        None => Reply::Int(-2),
        Some(Deadline::Never) => Reply::Int(-1),
        Some(Deadline::At(at)) => {
            let ms = at.saturating_duration_since(cx.now.now()).as_millis();
            Reply::Int(((ms + unit_ms / 2) / unit_ms) as i64)
        }
    }
}

fn flush(cx: &mut Context) -> Reply {
    cx.store.clear();
    Reply::Simple("OK")
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND LIST`,
/// `COMMAND DOCS` (empty: there are none): what clients ask at start.
fn command(a: &[&[u8]]) -> Reply {
    let Some(sub) = a.first() else { return every_command() };
    match sub.to_ascii_uppercase().as_slice() {
        b"COUNT" if a.len() == 1 => Reply::Int(COMMANDS.len() as i64),
        b"LIST" if a.len() == 1 => {
            Reply::Array(COMMANDS.iter().map(|spec| Reply::bulk(spec.name.as_bytes())).collect())
        }
        b"INFO" => Reply::Array(
            a[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name);
                    COMMANDS.iter().find(|spec| spec.name.eq_ignore_ascii_case(&name)).map_or(Reply::Nil, describe)
                })
                .collect(),
        ),
        b"DOCS" => Reply::Array(Vec::new()),
        b"COUNT" | b"LIST" => wrong_arity(&format!("command|{}", String::from_utf8_lossy(sub).to_lowercase())),
        _ => unknown_subcommand(sub, "COMMAND"),
    }
}

/// `COMMAND`'s reply, encoded once: ~1.6 KB for a 9-byte request, so
/// building it each time made it the costliest request per byte (a
/// client pipelining it kept the instance busy past its CPU bound).
fn every_command() -> Reply {
    thread_local! {
        static ENCODED: Rc<[u8]> = {
            let mut out = Vec::new();
            Reply::Array(COMMANDS.iter().map(describe).collect()).encode(&mut out);
            Rc::from(out)
        };
    }
    Reply::Encoded(ENCODED.with(Rc::clone))
}

/// One `COMMAND` entry: name, arity, flags, first/last key and step, then
/// (empty) ACL categories, tips, key specifications and subcommands.
fn describe(spec: &Spec) -> Reply {
    let (first, last, step) = spec.keys;
    Reply::Array(vec![
        Reply::bulk(spec.name.as_bytes()),
        Reply::Int(spec.arity),
        Reply::Array(spec.flags.iter().map(|flag| Reply::Simple(flag)).collect()),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// `HELLO [protover [AUTH username password] [SETNAME name]]` as a server
/// that speaks RESP2 only: version 2 (or none) gets the server's details as
/// a flat array; 3 gets `-NOPROTO`. There are no passwords: `AUTH` is
/// accepted for user `default` (Redis's default user without a password).
fn hello(a: &[&[u8]], cx: &mut Context) -> Reply {
    if let Some(version) = a.first() {
        match parse_i64(version) {
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
            Some(2) => {}
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
        }
    }
    let mut i = 1;
    while i < a.len() {
        let option = a[i].to_ascii_uppercase();
        let left = a.len() - i - 1;
        match option.as_slice() {
            b"AUTH" if left >= 2 => {
                if a[i + 1] != b"default" {
                    return Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
                }
                i += 3;
            }
            b"SETNAME" if left >= 1 => i += 2,
            _ => {
                let option = String::from_utf8_lossy(a[i]);
                return Reply::error(format!("ERR Syntax error in HELLO option '{}'", truncate(&option, 128)));
            }
        }
    }
    let text = |t: &str| Reply::bulk(t.as_bytes());
    Reply::Array(vec![
        text("server"),
        text("resp-kv"),
        text("version"),
        text(env!("CARGO_PKG_VERSION")),
        text("proto"),
        Reply::Int(2),
        text("id"),
        Reply::Int(cx.connection_id as i64),
        text("mode"),
        text("standalone"),
        text("role"),
        text("master"),
        text("modules"),
        Reply::Array(Vec::new()),
    ])
}

/// `CLIENT SETNAME | SETINFO | GETNAME | ID`: what client libraries send
/// when they connect (names are accepted, not kept).
fn client(a: &[&[u8]], cx: &mut Context) -> Reply {
    match (a[0].to_ascii_uppercase().as_slice(), a.len()) {
        (b"SETNAME", 2) | (b"SETINFO", 3) => Reply::Simple("OK"),
        (b"GETNAME", 1) => Reply::Nil,
        (b"ID", 1) => Reply::Int(cx.connection_id as i64),
        (b"SETNAME" | b"SETINFO" | b"GETNAME" | b"ID", _) => {
            wrong_arity(&format!("client|{}", String::from_utf8_lossy(a[0]).to_lowercase()))
        }
        _ => unknown_subcommand(a[0], "CLIENT"),
    }
}

/// `CONFIG GET parameter...`: the few parameters benchmarks and clients
/// read (`*` lists them all). Nothing can be set.
fn config(a: &[&[u8]], cx: &mut Context) -> Reply {
    if !a[0].eq_ignore_ascii_case(b"GET") {
        return unknown_subcommand(a[0], "CONFIG");
    }
    if a.len() < 2 {
        return wrong_arity("config|get");
    }
    let maxmemory = cx.store.maxmemory().to_string();
    let known = [("save", ""), ("appendonly", "no"), ("databases", "1"), ("maxmemory", maxmemory.as_str())];
    let mut pairs = Vec::new();
    for (name, value) in known {
        if a[1..].iter().any(|pattern| pattern == b"*" || pattern.eq_ignore_ascii_case(name.as_bytes())) {
            pairs.push(Reply::bulk(name.as_bytes()));
            pairs.push(Reply::bulk(value.as_bytes()));
        }
    }
    Reply::Array(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DEFAULT_MAXMEMORY;

    fn run(store: &mut Store, now: Instant, line: &str) -> Reply {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let clock = Clock::at(now);
        let mut cx = Context { store, now: &clock, connection_id: 7 };
        match execute(&args, &mut cx) {
            Outcome::Reply(reply) | Outcome::ReplyAndClose(reply) => reply,
            Outcome::Refuse(what) => panic!("refused: {what}"),
        }
    }

    #[test]
    fn every_command_has_a_function_and_arity_is_checked() {
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        let now = Instant::now();
        for spec in COMMANDS {
            // One argument too few for fixed arity, too few for "at least".
            let count = if spec.arity > 0 { spec.arity - 1 } else { -spec.arity - 1 };
            if count == 0 {
                continue;
            }
            let line =
                std::iter::once(spec.name).chain(std::iter::repeat_n("x", count as usize - 1)).collect::<Vec<_>>();
            let reply = run(&mut store, now, &line.join(" "));
            assert_eq!(reply, wrong_arity(spec.name), "{}", spec.name);
        }
    }

    #[test]
    fn expiry_in_seconds_and_past_times() {
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        let now = Instant::now();
        assert_eq!(run(&mut store, now, "SET k v EX 10"), Reply::Simple("OK"));
        assert_eq!(run(&mut store, now, "TTL k"), Reply::Int(10));
        assert_eq!(run(&mut store, now, "EXPIRE k 5 GT"), Reply::Int(0));
        assert_eq!(run(&mut store, now, "EXPIRE k 5 LT"), Reply::Int(1));
        assert_eq!(run(&mut store, now + Duration::from_secs(6), "GET k"), Reply::Nil);
        assert_eq!(run(&mut store, now, "SET k v"), Reply::Simple("OK"));
        assert_eq!(run(&mut store, now, "EXPIRE k -1"), Reply::Int(1));
        assert_eq!(run(&mut store, now, "EXISTS k"), Reply::Int(0));
        assert_eq!(
            run(&mut store, now, "SET k v EX 9223372036854775807"),
            Reply::error("ERR invalid expire time in 'set' command")
        );
        assert_eq!(
            run(&mut store, now, "EXPIRE k 9223372036854775807"),
            Reply::error("ERR invalid expire time in 'expire' command")
        );
    }

    #[test]
    fn a_reply_past_the_limit_is_an_error() {
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        let now = Instant::now();
        let big = "x".repeat(512 * 1024);
        assert_eq!(run(&mut store, now, &format!("SET big {big}")), Reply::Simple("OK"));
        let line = format!("MGET{}", " big".repeat(MAX_REPLY / (512 * 1024)));
        assert!(matches!(run(&mut store, now, &line), Reply::Error(e) if e.contains("over the 8388608-byte limit")));
        let line = format!("MGET{}", " big".repeat(MAX_REPLY / (512 * 1024) - 1));
        assert!(matches!(run(&mut store, now, &line), Reply::Array(values) if values.len() == 15));
    }

    #[test]
    fn counters_stay_in_range() {
        let mut store = Store::new(DEFAULT_MAXMEMORY);
        let now = Instant::now();
        assert_eq!(run(&mut store, now, "SET n 9223372036854775806"), Reply::Simple("OK"));
        assert_eq!(run(&mut store, now, "INCR n"), Reply::Int(i64::MAX));
        assert_eq!(run(&mut store, now, "INCR n"), Reply::error("ERR increment or decrement would overflow"));
        assert_eq!(run(&mut store, now, "DECRBY n -9223372036854775808"), Reply::error("ERR decrement would overflow"));
        assert_eq!(run(&mut store, now, "SET s 01"), Reply::Simple("OK"));
        assert_eq!(run(&mut store, now, "INCR s"), Reply::error(NOT_AN_INTEGER));
    }
}
