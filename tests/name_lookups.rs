//! Name look-ups are bounded per service: a guest that looks names up in a
//! loop against a slow DNS server holds at most `MAX_LOOKUPS` threads, and a
//! neighbouring service's own look-ups do not wait behind its.
//!
//! The slow resolver is real: the host runs in a private mount namespace
//! (`unshare -m`) whose `/etc/resolv.conf` names a DNS server on loopback
//! that never answers (a UDP socket this test holds), so every look-up of a
//! name outside `/etc/hosts` takes the resolver's full time-out. Nothing
//! leaves loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::policy::resolve::MAX_LOOKUPS;
use portcullis_tests::*;

/// A DNS server address on loopback that answers nothing.
const SILENT_DNS: &str = "127.0.83.53:53";

/// The threads of process `pid` whose name starts with `prefix`, and all of them.
fn threads(pid: u32, prefix: &str) -> (usize, usize) {
    let mut named = 0;
    let mut all = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        all += 1;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            named += 1;
        }
    }
    (named, all)
}

// The upstream echo runs on the runtime's other thread while this one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_flood_holds_a_few_threads_and_delays_no_neighbour() {
    let Ok(_silent) = UdpSocket::bind(SILENT_DNS) else {
        panic!("cannot bind the silent DNS server on {SILENT_DNS} (this test runs as root)");
    };
    let upstream = native_tcp_echo().await;
    let dir = root().join("target/test-scratch/name-lookups");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.83.53\noptions timeout:5 attempts:2\n").unwrap();
    let manifest = dir.join("portcullis.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[service]]\nname = \"flooder\"\ncomponent = {:?}\n\
             env = {{ MODE = \"lookups\", TARGET = \"slow.example:80\", COUNT = \"2000\" }}\n\
             allow-connect = [\"tcp://slow.example:80\", \"tcp://*.slow.example:80\"]\n\n\
             [[service]]\nname = \"proxy\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n\
             env = {{ UPSTREAM = \"localhost:{port}\" }}\nallow-connect = [\"tcp://localhost:{port}\"]\n",
            guest("clients"),
            guest("tcp-proxy"),
            port = upstream.port(),
        ),
    )
    .unwrap();
    // The host, in a mount namespace of its own where /etc/resolv.conf is ours.
    let mut child = KillOnDrop(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\""])
            .arg(&resolv)
            .arg(portcullis_bin())
            .args(["run", "--manifest", manifest.to_str().unwrap()])
            .env("PORTCULLIS_CACHE_DIR", test_cache())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("unshare"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let proxy: SocketAddr = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no `listening on` line");
        if let Some(addr) = line.trim().strip_prefix("proxy: listening on ") {
            break addr.parse().unwrap();
        }
    };
    let pid = child.0.id();
    // The flood is under way once its look-ups hold their threads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads(pid, "portcullis-look").0 == 0 {
        assert!(Instant::now() < deadline, "no look-up under way");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The neighbour's client: its look-up of `localhost` (from /etc/hosts)
    // runs beside the flood, not behind it. A loaded machine may be slow;
    // before the bound the queue ahead of it was minutes long.
    let mut client = TcpStream::connect(proxy).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    client.write_all(b"through the proxy").unwrap();
    let mut answer = [0u8; 17];
    client.read_exact(&mut answer).expect("the neighbour answered while the flood went on");
    assert_eq!(&answer, b"through the proxy");
    let (lookups, all) = threads(pid, "portcullis-look");
    assert!(lookups <= MAX_LOOKUPS, "{lookups} look-up threads");
    assert!(all < 40, "{all} threads in the process during the flood");
}

/// The host process, ended when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
