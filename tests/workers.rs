//! The bounds that stay process-wide when a service is spread over worker
//! threads: each test runs the real binary with `--workers 2` and a service
//! whose connections the kernel spreads over both workers (`per-worker` or
//! `per-connection` instances), and shows the bound holds for the service or
//! the process as a whole, not per worker. (`--max-connections` over workers:
//! `tests/cli.rs`.) Which worker a connection lands on is the kernel's pick
//! (a hash of its addresses): each test makes enough connections that both
//! workers take part but for a chance far below one in a thousand.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use portcullis_tests::HostProcess;
use portcullis_tests::std_client::{closed_within, connect_from, echoed, line};

/// `portcullis run <guest> --listen 127.0.0.1:0 --workers 2 ARGS` (unless
/// ARGS say how many workers), and the address it listens on.
fn serve(test: &str, guest: &str, args: &[&str]) -> (HostProcess, SocketAddr) {
    serve_with_limits(test, guest, args, None)
}

fn serve_with_limits(
    test: &str,
    guest: &str,
    args: &[&str],
    before_exec: Option<fn() -> std::io::Result<()>>,
) -> (HostProcess, SocketAddr) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    if !args.contains(&"--workers") {
        all.extend(["--workers", "2"]);
    }
    all.extend_from_slice(args);
    let mut host = HostProcess::start(&format!("workers-{test}"), guest, &all, before_exec);
    let addr = host.listening_on();
    (host, addr)
}

#[test]
fn the_per_address_cap_and_its_log_line_hold_over_workers() {
    let (host, addr) = serve("per-ip", "echo", &["--instances", "per-worker", "--max-connections-per-ip", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", addr)).collect();
    for stream in &mut held {
        echoed(stream, b"mine\n").unwrap();
    }
    // Whichever worker each lands on, a fourth from that address is refused:
    // the cap counts the service's connections, not a worker's.
    for _ in 0..40 {
        let mut again = connect_from("127.0.0.2", addr);
        let _ = again.write_all(b"more\n");
        assert!(closed_within(&mut again, Duration::from_secs(5)), "a fourth connection from one address was served");
    }
    echoed(&mut connect_from("127.0.0.3", addr), b"other\n").unwrap();
    // The refusals of both workers are coalesced together: one line, then
    // counts, not a line per worker per burst.
    let log = host.log_with("connections refused at --max-connections-per-ip: ", 1, Duration::from_secs(3));
    let lines = log.lines().filter(|l| l.contains("--max-connections-per-ip")).count();
    assert!((2..=6).contains(&lines), "40 refusals over two workers in {lines} log lines:\n{log}");
}

#[test]
fn the_memory_budget_holds_over_workers() {
    // Instances per connection of 256 MiB each, each using 200 MiB, in a
    // process with 500 MiB for all: two fit, whichever workers they are on.
    let args = [
        "--env",
        "MODE=alloc",
        "--env",
        "ALLOC_MIB=200",
        "--instances",
        "per-connection",
        "--max-memory",
        "256MiB",
        "--memory-budget",
        "500MiB",
        "--max-instances",
        "16",
    ];
    let (host, addr) = serve("budget", "hostile", &args);
    let mut clients = Vec::new();
    let mut served = 0;
    for _ in 0..12 {
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if line(&mut client) == "ok\n" {
            served += 1;
        }
        clients.push(client);
    }
    assert_eq!(served, 2, "two instances fit the budget: {}", host.log());
    let log = host.log_with("memory budget reached", 1, Duration::from_secs(3));
    assert!(log.contains("memory budget reached"), "{log}");
}

/// A hard open-file limit of 256: guests may hold at most 192 sockets
/// together (a quarter, at least 64, stays the host's).
fn few_descriptors() -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
    // SAFETY: setrlimit with a valid struct, in the child before exec.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every connection's instance binds UDP sockets until refused and keeps
/// them while its connection is open; --max-sockets would let each have
/// 1000, the process's ceiling lets all of them together have what the
/// open-file limit (256) leaves: less a quarter (64) for the host, less what
/// the workers and listeners hold. Returns the ceiling the guests were told.
fn socket_ceiling_over(workers: &str) -> usize {
    let args = [
        "--env",
        "MODE=udp-flood",
        "--allow-udp",
        "udp://127.0.0.1:9",
        "--max-sockets",
        "1000",
        "--instances",
        "per-connection",
        "--workers",
        workers,
    ];
    let (mut host, addr) =
        serve_with_limits(&format!("socket-ceiling-{workers}"), "hostile", &args, Some(few_descriptors));
    let (mut attackers, mut opened, mut ceiling) = (Vec::new(), 0, None);
    for _ in 0..12 {
        let mut attacker = TcpStream::connect(addr).unwrap();
        attacker.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        attacker.write_all(b"flood\n").unwrap();
        // `opened N: socket limit reached: ... (C guest sockets at most)`
        let answer = line(&mut attacker);
        let number = |text: &str| text.trim().parse::<usize>().ok();
        let n = answer.strip_prefix("opened ").and_then(|rest| number(rest.split(':').next()?));
        let told =
            answer.rsplit_once('(').and_then(|(_, rest)| number(rest.strip_suffix(" guest sockets at most)\n")?));
        let (Some(n), Some(told)) = (n, told) else { panic!("answer {answer:?}; log: {}", host.log()) };
        assert_eq!(*ceiling.get_or_insert(told), told, "the ceiling moved");
        opened += n;
        attackers.push(attacker);
    }
    let ceiling = ceiling.unwrap();
    assert_eq!(opened, ceiling, "sockets the instances of all workers hold together");
    assert!(ceiling < 192, "the descriptors the workers hold were not kept from the guests: {ceiling}");
    assert!(host.descriptors() < 256 - 32, "{} descriptors open: too few left for accepting", host.descriptors());
    let (code, _) = host.terminate(Duration::from_secs(10));
    assert_eq!(code, 0);
    assert!(!host.log().contains("accept failed"), "{}", host.log());
    ceiling
}

#[test]
fn the_socket_ceiling_holds_over_workers() {
    let two = socket_ceiling_over("2");
    // Thirty workers hold more descriptors of their own: the guests get fewer,
    // and the host keeps its quarter for accepting.
    let thirty = socket_ceiling_over("30");
    assert!(thirty < two, "30 workers left the guests {thirty} sockets, 2 workers {two}");
}

#[test]
fn the_output_rate_holds_over_workers() {
    // Eight clients at once each have an instance print 8 MiB; the service's
    // output rate (64 KiB a second) is one for all its instances, on every
    // worker. Its stdout is read until the process exits.
    let (mut host, addr) = serve("output-rate", "hostile", &["--env", "MODE=print-flood", "--instances", "per-worker"]);
    let pid = host.pid() as i32;
    let started = Instant::now();
    let stopper = std::thread::spawn(move || {
        let attackers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut attacker = TcpStream::connect(addr).unwrap();
                    attacker.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    attacker.write_all(b"go\n").unwrap();
                    line(&mut attacker)
                })
            })
            .collect();
        let answers: Vec<String> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
        let printing = started.elapsed();
        // What was let through is written by now; the stop closes stdout.
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: plain kill(2) on the host, our child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        (answers, printing)
    });
    let mut printed = 0;
    loop {
        let line = host.stdout_line();
        if line.is_empty() {
            break;
        }
        printed += usize::from(line.starts_with('x'));
    }
    let (answers, printing) = stopper.join().unwrap();
    assert!(answers.iter().all(|a| a == "printed\n"), "{answers:?}");
    // Lines of 1 KiB: 64 a second, in as many one-second windows as the
    // printing can have touched.
    let windows = printing.as_secs() as usize + 1;
    eprintln!(
        "measured: 8 x 8 MiB printed over two workers: lines of 1 KiB let through, time printing: {printed}, {printing:?}"
    );
    assert!(printed > 0, "nothing printed");
    assert!(printed <= 64 * windows, "{printed} lines of 1 KiB let through in {printing:?} ({windows} window(s))");
    let log = host.log_with("guest output dropped", 1, Duration::from_secs(3));
    assert!(log.contains("guest output dropped: over 65536 bytes or 100 writes a second"), "{log}");
}

#[test]
fn a_spread_service_refuses_an_address_already_in_use() {
    // `SO_REUSEPORT` would let a second group of sockets join the first and
    // take a share of its clients: refused instead, as a plain bind is.
    let (host, addr) = serve("in-use", "echo", &["--instances", "per-worker"]);
    let address = addr.to_string();
    let echo = portcullis_tests::guest("echo").display().to_string();
    let second = ["run", &echo, "--listen", &address, "--instances", "per-worker", "--workers", "2"];
    let twice = ["run", &echo, "--listen", "127.0.0.1:0", "--listen", &address, "--listen", &address];
    for args in [&second[..], &twice[..]] {
        let out = std::process::Command::new(portcullis_tests::portcullis_bin())
            .args(args)
            .env("PORTCULLIS_CACHE_DIR", portcullis_tests::test_cache())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} started: {stderr}");
        assert!(stderr.contains("Address already in use"), "{args:?}: {stderr}");
    }
    // The first still has its clients to itself.
    echoed(&mut connect_from("127.0.0.2", addr), b"mine\n").unwrap();
    drop(host);
}

#[test]
fn per_worker_instances_take_no_slot_of_the_per_connection_pool() {
    // A pool of 2 slots, both held by connections: the per-worker service's
    // four instances (and their restarts) come from elsewhere, and every
    // one of its clients is answered.
    let manifest = format!(
        "workers = 4\n\n[[service]]\nname = \"pc\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n\
         instances = \"per-connection\"\nmax-connections = 2\n\n\
         [[service]]\nname = \"pw\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\ninstances = \"per-worker\"\n",
        portcullis_tests::guest("echo"),
        portcullis_tests::guest("echo"),
    );
    let mut host = HostProcess::start_manifest("workers-pool-apart", &manifest, &["--max-instances", "2"]);
    let (mut pc, mut pw) = (None, None);
    for _ in 0..2 {
        let line = host.stdout_line();
        let (name, addr) = line.split_once(": listening on ").expect("NAME: listening on ADDR");
        let addr: SocketAddr = addr.parse().unwrap();
        if name == "pc" { pc = Some(addr) } else { pw = Some(addr) }
    }
    let (pc, pw) = (pc.unwrap(), pw.unwrap());
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.2", pc)).collect();
    for conn in &mut held {
        echoed(conn, b"held\n").unwrap();
    }
    for i in 0..20 {
        echoed(&mut connect_from("127.0.0.3", pw), format!("client {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("per-worker client {i}: {e}; log: {}", host.log()));
    }
    assert!(!host.log().contains("failed to start"), "{}", host.log());
}

#[test]
fn no_more_connections_are_served_at_once_than_max_instances() {
    // A cap of 50 connections for the service, but 2 instances for the
    // process: over 4 workers (each with a spare made ahead), still 2
    // connections are served at once; the rest are closed after a moment.
    let args = ["--instances", "per-connection", "--max-instances", "2", "--max-connections", "50", "--workers", "4"];
    let (host, addr) = serve("max-instances", "echo", &args);
    let mut served = Vec::new();
    let mut closed = 0;
    for i in 0..10 {
        let mut client = connect_from("127.0.0.2", addr);
        match echoed(&mut client, format!("client {i}\n").as_bytes()) {
            Ok(()) => served.push(client),
            Err(_) => closed += 1,
        }
    }
    assert_eq!(served.len(), 2, "served at once past --max-instances 2 ({closed} closed): {}", host.log());
    // Honest clients after them are served again once those leave.
    drop(served);
    std::thread::sleep(Duration::from_millis(200));
    echoed(&mut connect_from("127.0.0.3", addr), b"after\n").unwrap_or_else(|e| panic!("{e}: {}", host.log()));
}

#[test]
fn spares_made_ahead_give_the_memory_budget_back_to_connections() {
    // Four per-connection services over 16 workers: 64 spares made ahead,
    // each holding its instance's memory against the process's budget. A
    // connection the budget cannot fit asks them back, as it does for a
    // pool slot: one service's clients are served as with one worker.
    let echo = portcullis_tests::guest("echo");
    let mut manifest = String::from("workers = 16\n");
    for name in ["a", "b", "c", "d"] {
        manifest.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\ncomponent = {echo:?}\nlisten = [\"127.0.0.1:0\"]\n\
             instances = \"per-connection\"\n"
        ));
    }
    let mut host = HostProcess::start_manifest("workers-spares-budget", &manifest, &["--memory-budget", "80MiB"]);
    let mut first = None;
    for _ in 0..4 {
        let line = host.stdout_line();
        let (name, addr) = line.split_once(": listening on ").expect("NAME: listening on ADDR");
        if name == "a" {
            first = Some(addr.parse::<SocketAddr>().unwrap());
        }
    }
    let addr = first.unwrap();
    // Let every worker make its spares.
    std::thread::sleep(Duration::from_millis(500));
    let mut served = Vec::new();
    for i in 0..50 {
        let mut client = connect_from("127.0.0.2", addr);
        if echoed(&mut client, format!("client {i}\n").as_bytes()).is_ok() {
            served.push(client);
        }
    }
    // An echo instance holds about 1 MiB: ~75 fit in 80 MiB once the idle
    // spares are given back (before, the spares kept all but ~27 out).
    assert_eq!(served.len(), 50, "clients served within the budget: {}", host.log());
}
