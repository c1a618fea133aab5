//! `terminal-sim --connect A,B` against a replicated pair
//! (docs/replication.md): a node that does not serve the brand answers
//! NOT_ACTIVE and the till moves on to the next address; after the
//! active is killed, the same till reaches the node that took over.
mod common;
#[path = "../../tests/common/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::time::{Duration, Instant};

use common::{run_bounded, serve, sim_bin, Daemon, Run};
use nats::NatsCluster;

#[test]
fn a_till_given_both_nodes_finds_the_active_one_before_and_after_a_failover() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    let active = Daemon::start_with(dir.path(), &["--replicate", &urls]);
    let standby_data = dir.path().join("standby");
    std::fs::create_dir_all(&standby_data).unwrap();
    std::fs::copy(
        active.data.join("server.key"),
        standby_data.join("server.key"),
    )
    .unwrap();
    let no_limits = [
        "--sign-on-failures-per-minute",
        "0",
        "--card-misses-per-minute",
        "0",
    ];
    let mut args = vec!["--standby", "--replicate", urls.as_str()];
    args.extend(no_limits);
    let (mut standby, standby_addr) = serve(&standby_data, &args);

    let key = active.terminal_key(0);
    let card = active.manifest.cards[0].clone();
    let state_dir = dir.path().join("till-state");
    let till = |connect: &str, txn: &str| -> Run {
        let args = [
            "--connect",
            connect,
            "--key",
            key.to_str().unwrap(),
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--timeout",
            "5",
            "--json",
            "--txn",
            txn,
            "purchase",
            "--card",
            &card,
            "--amount",
            "1.00",
        ];
        run_bounded(&sim_bin(), &args, Duration::from_secs(60))
    };
    // The standby alone says it is not the brand's active node.
    let alone = till(&standby_addr, "10");
    assert_eq!(alone.json()["error"], "NOT_ACTIVE", "{alone:?}");
    // Given both, standby first, the till is served by the active.
    let both = format!("{standby_addr},{}", active.addr);
    let first = till(&both, "11").ok();
    assert_eq!(first["balance_minor"], 10_000 - 100, "{first}");

    // The active dies; the same till, same list, reaches the new active
    // once the lease lapses.
    drop(active);
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let r = till(&both, "12");
        if r.code == 0 {
            break r.ok();
        }
        assert!(Instant::now() < deadline, "no node served the till: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(served["balance_minor"], 10_000 - 200, "{served}");
    let _ = standby.kill();
    let _ = standby.wait();
}
