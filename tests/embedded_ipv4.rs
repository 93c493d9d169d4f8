//! IPv6 forms with an IPv4 address inside are judged as that IPv4, end to
//! end: under `*` with `--block-private`, a guest cannot reach the metadata
//! service by writing 169.254.169.254 as a NAT64 (`64:ff9b::a9fe:a9fe`) or
//! 6to4 (`2002:a9fe:a9fe::1`) address. A denied send or connect makes no
//! syscall; and the host runs in a network namespace of its own with no
//! route anywhere (`unshare -n`), so that even a policy that let one through
//! could send nothing off the machine.

use portcullis::policy::{Policy, Use};
use portcullis_tests::*;

/// 169.254.169.254 behind a NAT64 gateway, and as 6to4.
const TARGETS: [&str; 2] = ["[64:ff9b::a9fe:a9fe]:53", "[2002:a9fe:a9fe::1]:53"];

/// The policy as built refuses `target` for `use_` under these grants:
/// checked first, so that a policy that lets it through fails the test here,
/// before a guest could send anything towards it.
fn assert_policy_refuses(use_: Use, grant: &str, target: &str) {
    let (connect, udp) = match use_ {
        Use::UdpSend => (vec![], vec![grant.to_string()]),
        _ => (vec![grant.to_string()], vec![]),
    };
    let policy = Policy::parse(&connect, &[], &udp, true).unwrap();
    let (host, port) = target.rsplit_once(':').unwrap();
    let checked = policy.check_literal(use_, host, port.parse().unwrap());
    assert!(matches!(checked, Some(Err(_))), "the policy lets {target} through: {checked:?}");
}

/// `portcullis run <guest>` in a fresh network namespace (no interface up:
/// nothing can leave), to completion (at most 30 s).
async fn run_isolated(backend: Backend, guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.arg("-n").arg(portcullis_bin()).arg("run").arg(backend.guest(guest_name)).args(args);
    for (k, v) in env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.env("PORTCULLIS_CACHE_DIR", test_cache()).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output()).await;
    out.expect("program did not finish in 30 s").expect("unshare -n (this test runs as root)")
}

/// The guest was told `permission denied` for `expected`, and the host logged it.
fn assert_denied(out: &std::process::Output, expected: &str) {
    assert_eq!(stdout_of(out), format!("error: PermissionDenied: {expected}\n"), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expected), "the denial is logged: {stderr}");
}

/// `guest` in `MODE=echo` aims at each of [`TARGETS`] under `*` for `use_`
/// with `--block-private`: the policy and the running host refuse each.
async fn every_target_is_denied(backend: Backend, guest: &str, use_: Use) {
    let (flag, grant, verb, scheme) = match use_ {
        Use::UdpSend => ("--allow-udp", "udp://*:*", "send to", "udp"),
        _ => ("--allow-connect", "tcp://*:*", "connect", "tcp"),
    };
    for target in TARGETS {
        assert_policy_refuses(use_, grant, target);
        let env = [("MODE", "echo"), ("TARGET", target)];
        let out = run_isolated(backend, guest, &env, &[flag, grant, "--block-private"]).await;
        assert_denied(&out, &format!("permission denied: {verb} {scheme}://{target} is not granted"));
    }
}

async fn udp_sends_to_the_metadata_service_as_nat64_or_6to4_are_denied(backend: Backend) {
    every_target_is_denied(backend, "udp-clients", Use::UdpSend).await;
}

async fn tcp_connects_to_the_metadata_service_as_nat64_or_6to4_are_denied(backend: Backend) {
    every_target_is_denied(backend, "clients", Use::TcpConnect).await;
}

on_both_backends!(
    udp_sends_to_the_metadata_service_as_nat64_or_6to4_are_denied,
    tcp_connects_to_the_metadata_service_as_nat64_or_6to4_are_denied
);
