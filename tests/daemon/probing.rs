//! The probing budgets (`--card-misses-per-minute`) against a till that
//! pipelines its guesses: every request in flight is held to the budget,
//! not only the ones answered before the next arrived.
use super::*;

/// Card misses allowed per minute in these tests.
const BUDGET: usize = 10;
/// Connections the prober opens (of the 8 a terminal key may hold).
const CONNECTIONS: usize = 6;
/// Requests each connection pipelines (the in-flight bound it is told).
const PIPELINED: usize = 64;

/// `n` inquiries of `cards` (round robin) signed by `key`, as one buffer
/// of wire bytes, written at once so that all of them are in flight
/// together; then every answer read. Returns each answer's error code
/// (`None` for a reply).
async fn pipeline_inquiries(
    addr: std::net::SocketAddr,
    key: &ed25519_dalek::SigningKey,
    brand: u32,
    cards: &[String],
) -> Vec<Option<E>> {
    let mut f = sign_on(addr, key).await;
    let mut bytes = Vec::new();
    for i in 0..PIPELINED {
        let card = cards[i % cards.len()].clone();
        let req = request(brand, 0, "test", Op::Inquiry(pb::Inquiry { card }));
        bytes.extend(signed_frame(key, 100 + i as u64, &req));
    }
    bounded(f.get_mut().write_all(&bytes)).await.expect("write");
    let mut codes = Vec::with_capacity(PIPELINED);
    for _ in 0..PIPELINED {
        codes.push(error_code(&raw_recv(&mut f).await));
    }
    codes
}

/// The answers of `CONNECTIONS` connections of `key` pipelining at once.
async fn pipelined_everywhere(
    addr: std::net::SocketAddr,
    key: &ed25519_dalek::SigningKey,
    brand: u32,
    cards: &[String],
) -> Vec<Option<E>> {
    let runs = (0..CONNECTIONS).map(|_| pipeline_inquiries(addr, key, brand, cards));
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_card_guesses_get_no_more_than_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = BUDGET.to_string();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--card-misses-per-minute", &budget]);
    let brand = demo.manifest.brand_id;
    // An honest till at a busy counter first: every pipelined request on
    // real cards is answered, none slowed into a refusal by the budget.
    let honest = read_key_file(&demo.terminal_key_path(1)).unwrap();
    let hits = pipelined_everywhere(d.addr, &honest, brand, &demo.manifest.cards).await;
    assert_eq!(hits.len(), CONNECTIONS * PIPELINED);
    assert!(
        hits.iter().all(Option::is_none),
        "an honest till's hits were refused: {:?}",
        hits.iter().flatten().collect::<Vec<_>>()
    );
    // A stolen till guesses card numbers, all its connections pipelining.
    let stolen = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let guesses: Vec<String> = (0..PIPELINED)
        .map(|_| card_number::generate(brand))
        .collect();
    let answers = pipelined_everywhere(d.addr, &stolen, brand, &guesses).await;
    let misses = answers
        .iter()
        .filter(|c| **c == Some(E::CardNotFound))
        .count();
    let limited = answers
        .iter()
        .filter(|c| **c == Some(E::RateLimited))
        .count();
    // The budget's misses, and the one that reaches past it (it blocks
    // the till, as when guesses come one at a time); every other guess is
    // refused unseen.
    assert!(
        misses <= BUDGET + 1,
        "{misses} of {} pipelined guesses answered CARD_NOT_FOUND (budget {BUDGET})",
        answers.len()
    );
    assert_eq!(
        misses + limited,
        CONNECTIONS * PIPELINED,
        "every other guess is RATE_LIMITED: {answers:?}"
    );
    // Blocked, the till gets RATE_LIMITED for a real card too.
    let mut till = connect(d.addr, stolen).await;
    let real = Op::Inquiry(pb::Inquiry {
        card: demo.manifest.cards[0].clone(),
    });
    assert_eq!(refused(&mut till, 0, real).await, E::RateLimited);
}
