//! The Jepsen-style test, bounded: two tills buy without pause, each
//! retrying a purchase with the same signed bytes on the other node until
//! it is answered (as `terminal-sim --connect A,B` does), while the test
//! kills the active (-9), pauses the next active past its lease (SIGSTOP,
//! then SIGCONT), and kills a NATS node. Then: every acknowledged purchase
//! is in the ledger exactly once (each card's balance is its start less
//! exactly the purchases acknowledged, every receipt its own record),
//! and both nodes end with the same ledger byte for byte, verifying under
//! the one server key.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardd::client::{Client, ClientError};
use cardd::crypto::read_key_file;
use cardd::pb;

use crate::common::nats::NatsCluster;
use crate::common::reply::receipt;
use crate::common::run::export_and_verify;
use crate::common::{inquiry, purchase, wait_until, Daemon};
use crate::standby::{export_parts, records_on};

/// How long one purchase may take to be answered by either node.
const ANSWER_LIMIT: Duration = Duration::from_secs(40);

/// A till that knows both nodes.
struct Till {
    key: PathBuf,
    nodes: Arc<Mutex<Vec<SocketAddr>>>,
    client: Option<Client>,
    next: usize,
}

impl Till {
    /// A session at whichever node serves the brand.
    async fn signed_on(mut self) -> Client {
        let deadline = Instant::now() + ANSWER_LIMIT;
        loop {
            let addr = {
                let nodes = self.nodes.lock().unwrap();
                nodes[self.next % nodes.len()]
            };
            let key = read_key_file(&self.key).unwrap();
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(3), Client::connect(addr, key)).await
            {
                return c;
            }
            assert!(Instant::now() < deadline, "no node serves the brand");
            self.next += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `req` answered by whichever node serves the brand: the same signed
    /// bytes resent (to the other node after a failure) until a reply.
    async fn buy(&mut self, txn: u64, card: &str) -> pb::Reply {
        let deadline = Instant::now() + ANSWER_LIMIT;
        let mut req = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "purchase {txn} unanswered for {ANSWER_LIMIT:?}"
            );
            if self.client.is_none() {
                let addr = {
                    let nodes = self.nodes.lock().unwrap();
                    nodes[self.next % nodes.len()]
                };
                let key = read_key_file(&self.key).unwrap();
                match tokio::time::timeout(Duration::from_secs(3), Client::connect(addr, key)).await
                {
                    Ok(Ok(c)) => self.client = Some(c),
                    _ => {
                        self.next += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let c = self.client.as_mut().unwrap();
            let req = req.get_or_insert_with(|| c.request(txn, purchase(card, 100)));
            match tokio::time::timeout(Duration::from_secs(15), c.call(req)).await {
                Ok(Ok(reply)) => return reply,
                Ok(Err(ClientError::Refused(r)))
                    if !matches!(
                        r.code,
                        pb::ErrorCode::StorageFailure | pb::ErrorCode::NotActive
                    ) =>
                {
                    panic!("purchase {txn} refused: {r:?}")
                }
                _ => {
                    // Not served here, or the outcome is unknown: ask the
                    // other node, same bytes.
                    self.client = None;
                    self.next += 1;
                }
            }
        }
    }
}

/// Buys on `card` until `stop`, recording each acknowledged receipt's seq.
async fn buy_until(
    mut till: Till,
    card: String,
    first_txn: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    count: Arc<AtomicU64>,
) {
    let mut txn = first_txn;
    while !stop.load(Ordering::Relaxed) {
        let reply = till.buy(txn, &card).await;
        acked.lock().unwrap().push(receipt(&reply).seq);
        count.fetch_add(1, Ordering::Relaxed);
        txn += 1;
    }
}

/// Waits until the tills have had `more` purchases acknowledged.
fn progress(count: &AtomicU64, more: u64) {
    let from = count.load(Ordering::Relaxed);
    assert!(
        wait_until(|| count.load(Ordering::Relaxed) >= from + more),
        "the tills made no progress ({} acknowledged)",
        count.load(Ordering::Relaxed)
    );
}

fn node(data: &std::path::Path, urls: &str, http: SocketAddr, extra: &[&str]) -> Daemon {
    let http = http.to_string();
    let mut args = vec!["--replicate", urls, "--http-listen", &http];
    args.extend(Daemon::NO_RATE_LIMITS);
    args.extend(extra);
    Daemon::start(data, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_pauses_and_a_lost_nats_node_lose_and_double_nothing() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    let a_data = dir.path().join("a");
    let b_data = dir.path().join("b");
    let http = crate::common::http::free_addrs(2);
    let (a_http, b_http) = (http[0], http[1]);
    let mut a = node(&a_data, &urls, a_http, &["--demo"]);
    let demo = crate::common::Demo::load(&a_data);
    let brand = demo.manifest.brand_id;
    std::fs::create_dir_all(&b_data).unwrap();
    std::fs::copy(a_data.join("server.key"), b_data.join("server.key")).unwrap();
    let mut b = node(&b_data, &urls, b_http, &["--standby"]);

    let nodes = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let cards = [
        demo.manifest.cards[3].clone(),
        demo.manifest.cards[4].clone(),
    ];
    let acked: [Arc<Mutex<Vec<u64>>>; 2] = Default::default();
    let mut tills = Vec::new();
    for i in 0..2 {
        let till = Till {
            key: demo.terminal_key_path(i),
            nodes: nodes.clone(),
            client: None,
            next: 0,
        };
        tills.push(tokio::spawn(buy_until(
            till,
            cards[i].clone(),
            1_000,
            stop.clone(),
            acked[i].clone(),
            count.clone(),
        )));
    }
    let blocking = |f: fn(&AtomicU64, u64), n| {
        let count = count.clone();
        tokio::task::spawn_blocking(move || f(&count, n))
    };
    blocking(progress, 20).await.unwrap();

    // 1. The active dies; the standby takes over. The old one comes back
    // as a standby (its address stays in the tills' list).
    a.kill9();
    blocking(progress, 20).await.unwrap();
    a = node(&a_data, &urls, a_http, &["--standby"]);
    nodes.lock().unwrap()[0] = a.addr;

    // 2. The new active is paused past its lease: the other takes over;
    // resumed, the paused one must acknowledge nothing more.
    b.signal(libc::SIGSTOP);
    blocking(progress, 20).await.unwrap();
    b.signal(libc::SIGCONT);
    blocking(progress, 20).await.unwrap();

    // 3. A NATS node is lost: appends go on (after a leader election,
    // perhaps a failover).
    cluster.kill(0);
    blocking(progress, 20).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tills {
        tokio::time::timeout(ANSWER_LIMIT, t)
            .await
            .expect("a till stopped")
            .unwrap();
    }

    // Exactly once: each card's balance is its start less the purchases
    // acknowledged (1.00 each), and every receipt is its own record.
    // Whichever node serves the brand now (the other says NOT_ACTIVE).
    let mut owner = Till {
        key: demo.terminal_key_path(0),
        nodes: nodes.clone(),
        client: None,
        next: 0,
    }
    .signed_on()
    .await;
    let starts = [(50_000, 5_000), (100_000, 15_000)];
    let mut seqs: Vec<u64> = Vec::new();
    for i in 0..2 {
        let acked = acked[i].lock().unwrap().clone();
        let view = inquiry(&mut owner, &cards[i]).await;
        let spent = 100 * acked.len() as i64;
        assert_eq!(
            view.paid_balance_minor + view.bonus_balance_minor,
            starts[i].0 + starts[i].1 - spent,
            "card {i}: {} acknowledged",
            acked.len()
        );
        seqs.extend(acked);
    }
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "two acknowledgements share a record");
    drop(owner);

    // Both nodes end with one ledger: restart the one that was paused (it
    // stopped serving and following when its lease lapsed) as a standby.
    let end = records_on(a_http, brand)
        .max(records_on(b_http, brand))
        .unwrap();
    b.kill9();
    b = node(&b_data, &urls, b_http, &["--standby"]);
    assert!(
        wait_until(
            || records_on(b_http, brand) == Some(end) && records_on(a_http, brand) == Some(end)
        ),
        "both nodes reached record {end}"
    );
    a.kill9();
    b.kill9();
    let (ea, eb) = (dir.path().join("a.export"), dir.path().join("b.export"));
    let report = export_and_verify(&a_data, brand, &ea);
    export_and_verify(&b_data, brand, &eb);
    assert_eq!(report["records"], end, "{report}");
    assert!(
        export_parts(&ea).1 == export_parts(&eb).1,
        "both nodes hold the same ledger byte for byte"
    );
}
