//! Failure budgets per address and per terminal.
//!
//! A legitimate till signs on rarely and almost never names a card that
//! does not exist; an attacker guessing keys or card numbers does both all
//! the time. Each key (an address, a terminal) may fail `limit` times per
//! minute; past that it is refused for a cooldown. An IPv6 peer counts by
//! its /64, which one host is handed whole. Memory is bounded: past
//! MAX_GUARD_ENTRIES the entries with the oldest windows are forgotten, but
//! never one still blocked while any other can go (a flood of fresh
//! addresses must not lift a block); only a table of blocked keys alone
//! forgets the older half of them.
//!
//! Card misses are counted where they are found, not where they are
//! answered: a till pipelines up to 64 requests on each of its
//! connections, and a budget checked only as requests arrive would let all
//! of them through before the first miss is counted. So each request
//! carries its [`Probe`]; the brand's applier asks it before applying the
//! request (refused if blocked by then) and tells it each miss at once,
//! and the PIN checks do the same around each check. Hits cost a lookup
//! and are never held back. The slack left: an address's requests to
//! several brands are admitted by each brand's applier, so its budget may
//! be passed by one miss per brand applying at that moment, and PIN
//! guesses by one per check running (`MAX_PIN_CHECKS_AT_ONCE`) or daemon
//! thread deciding at that moment.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Refusal;
use crate::limits::{MAX_GUARD_ENTRIES, RATE_LIMIT_COOLDOWN_SECS};
use crate::pb::ErrorCode as E;

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardKey {
    /// A peer address: sign-on failures.
    SignOn(IpAddr),
    /// A signed-on key (its public key): requests whose signature did not
    /// verify. Counted against the key, not its address, so that one
    /// broken till behind a shop's NAT blocks its own sign-ons only.
    BadSigner([u8; 32]),
    /// A peer address: card misses.
    CardMissAddr(IpAddr),
    /// A terminal (brand, terminal id): card misses.
    CardMissTerminal(u32, u32),
}

impl GuardKey {
    /// The key as counted: an IPv6 address by its /64 (an IPv4-mapped one
    /// as the IPv4 address), so that one host cannot spread its failures
    /// over the addresses of its own network.
    fn counted(self) -> Self {
        let net = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        };
        match self {
            GuardKey::SignOn(ip) => GuardKey::SignOn(net(ip)),
            GuardKey::CardMissAddr(ip) => GuardKey::CardMissAddr(net(ip)),
            terminal => terminal,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// Counts failures per key within one-minute windows.
pub struct Guard {
    entries: Mutex<HashMap<GuardKey, Entry>>,
    sign_on_limit: u32,
    card_miss_limit: u32,
    /// When the latest block ends, in ms after `epoch` (0: none yet). Every
    /// request asks whether its keys are blocked, twice (on arrival and as
    /// it is applied); while no block is running the answer is known
    /// without the table's lock, which all connections and appliers share.
    blocks_end_ms: AtomicU64,
    epoch: Instant,
}

impl Guard {
    /// A guard with these per-minute limits (0 = unlimited).
    pub fn new(sign_on_limit: u32, card_miss_limit: u32) -> Self {
        Guard {
            entries: Mutex::new(HashMap::new()),
            sign_on_limit,
            card_miss_limit,
            blocks_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `at` in ms after the guard's epoch, rounded up.
    fn ms(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn limit(&self, key: &GuardKey) -> u32 {
        match key {
            GuardKey::SignOn(_) | GuardKey::BadSigner(_) => self.sign_on_limit,
            _ => self.card_miss_limit,
        }
    }

    /// True while `key` is blocked.
    pub fn blocked(&self, key: GuardKey) -> bool {
        self.any_blocked([Some(key), None])
    }

    /// True while any of `keys` is blocked; one lock for all of them (a
    /// request asks for its signer and its address, twice).
    fn any_blocked(&self, keys: [Option<GuardKey>; 2]) -> bool {
        let now = Instant::now();
        if self.ms(now) > self.blocks_end_ms.load(Ordering::Acquire) {
            return false;
        }
        let entries = self.entries.lock().expect("guard lock");
        keys.into_iter().flatten().any(|key| {
            entries
                .get(&key.counted())
                .and_then(|e| e.blocked_until)
                .is_some_and(|until| now < until)
        })
    }

    /// Counts one failure; returns true if `key` is now blocked.
    pub fn fail(&self, key: GuardKey) -> bool {
        let limit = self.limit(&key);
        if limit == 0 {
            return false;
        }
        let key = key.counted();
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("guard lock");
        if entries.len() >= MAX_GUARD_ENTRIES && !entries.contains_key(&key) {
            make_room(&mut entries, now);
        }
        let e = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(e.window_start) >= Duration::from_secs(60) {
            *e = Entry {
                window_start: now,
                failures: 0,
                blocked_until: e.blocked_until,
            };
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures > limit {
            let until = now + Duration::from_secs(RATE_LIMIT_COOLDOWN_SECS);
            e.blocked_until = Some(until);
            self.blocks_end_ms
                .fetch_max(self.ms(until), Ordering::AcqRel);
            tracing::warn!(
                ?key,
                failures = e.failures,
                "rate limit reached; blocked for {RATE_LIMIT_COOLDOWN_SECS} s"
            );
            return true;
        }
        false
    }
}

/// True for the refusals that tell a prober something: an unknown card
/// (or one of another brand), a wrong PIN, a PIN block that does not open
/// (guessing PINs across many cards, five tries each, is probing too).
pub fn is_probing(code: E) -> bool {
    matches!(
        code,
        E::CardNotFound | E::CardOtherBrand | E::WrongPin | E::PinBlockInvalid
    )
}

/// The refusal of a request whose signer or address is over its budget.
fn rate_limited() -> Refusal {
    Refusal::new(
        E::RateLimited,
        "too many unknown cards or wrong PINs; wait before trying again",
    )
}

/// The probing budgets one signed request counts against: its signer's
/// (a terminal, or an owner's namespace) and its peer address's. Its
/// probing answer counts once, wherever it is found first (the applier, a
/// PIN check, the write of the answer).
pub struct Probe {
    guard: Arc<Guard>,
    /// The signer's key: (brand, terminal or owner namespace). Kept small,
    /// as every answer in flight carries its probe.
    signer: (u32, u32),
    ip: Option<IpAddr>,
    counted: AtomicBool,
}

impl Probe {
    /// The budgets of a request of `brand` signed by `namespace` (a
    /// terminal id, or an owner's txn namespace) from `ip`.
    pub fn new(guard: Arc<Guard>, (brand, namespace): (u32, u32), ip: Option<IpAddr>) -> Self {
        Probe {
            guard,
            signer: (brand, namespace),
            ip,
            counted: AtomicBool::new(false),
        }
    }

    fn keys(&self) -> [Option<GuardKey>; 2] {
        let (brand, namespace) = self.signer;
        let signer = GuardKey::CardMissTerminal(brand, namespace);
        [Some(signer), self.ip.map(GuardKey::CardMissAddr)]
    }

    /// `Err(RATE_LIMITED)` while either budget is spent.
    pub fn admit(&self) -> Result<(), Refusal> {
        if self.guard.any_blocked(self.keys()) {
            return Err(rate_limited());
        }
        Ok(())
    }

    /// Counts `code` against both budgets if it is a probing answer and
    /// this request's was not counted yet.
    pub fn count(&self, code: E) {
        if !is_probing(code) || self.counted.swap(true, Ordering::Relaxed) {
            return;
        }
        for key in self.keys().into_iter().flatten() {
            self.guard.fail(key);
        }
    }
}

/// Forgets every entry whose window and block are over; if that frees
/// nothing, the older half of the windows not blocked now; if every entry
/// is blocked, the older half of them (a new key must still be counted:
/// the table stays bounded, and lifting a block then takes an attacker
/// MAX_GUARD_ENTRIES blocked keys of their own).
fn make_room(entries: &mut HashMap<GuardKey, Entry>, now: Instant) {
    let blocked = |e: &Entry| e.blocked_until.is_some_and(|u| now < u);
    entries
        .retain(|_, e| now.duration_since(e.window_start) < Duration::from_secs(60) || blocked(e));
    if entries.len() < MAX_GUARD_ENTRIES {
        return;
    }
    let unblocked = entries.values().any(|e| !blocked(e));
    let mut starts: Vec<Instant> = (entries.values())
        .filter(|e| !unblocked || !blocked(e))
        .map(|e| e.window_start)
        .collect();
    starts.sort_unstable();
    let cutoff = starts[starts.len() / 2];
    entries.retain(|_, e| e.window_start > cutoff || (unblocked && blocked(e)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_only_that_key() {
        let g = Guard::new(3, 5);
        let a = GuardKey::SignOn("10.0.0.1".parse().unwrap());
        let b = GuardKey::SignOn("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(!g.fail(a));
        }
        assert!(!g.blocked(a));
        assert!(g.fail(a));
        assert!(g.blocked(a));
        assert!(!g.blocked(b));
        let t = GuardKey::CardMissTerminal(1, 2);
        for _ in 0..5 {
            assert!(!g.fail(t));
        }
        assert!(g.fail(t));
    }

    #[test]
    fn an_ipv6_peer_counts_by_its_64() {
        let g = Guard::new(3, 5);
        let ip = |s: &str| GuardKey::SignOn(s.parse().unwrap());
        for host in 1..=3 {
            assert!(!g.fail(ip(&format!("2001:db8:1:2::{host}"))));
        }
        assert!(g.fail(ip("2001:db8:1:2:ffff::9")), "the fourth in one /64");
        assert!(g.blocked(ip("2001:db8:1:2::77")));
        assert!(!g.blocked(ip("2001:db8:1:3::1")), "another /64");
        // An IPv4-mapped address is its IPv4 address.
        let v4 = GuardKey::CardMissAddr("10.1.2.3".parse().unwrap());
        for _ in 0..5 {
            assert!(!g.fail(v4));
        }
        assert!(g.fail(GuardKey::CardMissAddr("::ffff:10.1.2.3".parse().unwrap())));
    }

    /// Fresh addresses filling the table must not lift a block.
    #[test]
    fn a_full_table_keeps_its_blocks() {
        let g = Guard::new(1, 1);
        let attacker = GuardKey::SignOn("192.0.2.1".parse().unwrap());
        assert!(!g.fail(attacker));
        assert!(g.fail(attacker));
        for i in 0..MAX_GUARD_ENTRIES as u32 + 10 {
            let other = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            g.fail(GuardKey::SignOn(IpAddr::V4(other)));
        }
        assert!(g.blocked(attacker));
        assert!(g.entries.lock().unwrap().len() <= MAX_GUARD_ENTRIES);
    }

    /// A table of blocked keys alone still counts a new key's failures.
    #[test]
    fn a_table_of_blocked_keys_alone_still_counts_a_new_key() {
        let g = Guard::new(1, 1);
        for i in 0..MAX_GUARD_ENTRIES as u32 {
            let key = GuardKey::SignOn(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            g.fail(key);
            assert!(g.fail(key), "blocked at its second failure");
        }
        let prober = GuardKey::SignOn("192.0.2.9".parse().unwrap());
        assert!(!g.fail(prober));
        assert!(g.fail(prober));
        assert!(g.blocked(prober), "the new key is counted and blocked");
        assert!(g.entries.lock().unwrap().len() <= MAX_GUARD_ENTRIES);
    }

    /// A probe counts only probing answers, against its signer and its
    /// address alike, and admits until either is blocked.
    #[test]
    fn a_probe_counts_misses_against_signer_and_address() {
        let g = Arc::new(Guard::new(10, 2));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let probe = |id| Probe::new(g.clone(), (1, id), Some(ip));
        let neighbour = probe(3);
        let answered = probe(2);
        answered.count(E::InsufficientFunds);
        answered.count(E::CardNotFound);
        answered.count(E::CardNotFound);
        assert!(answered.admit().is_ok(), "one request's miss counts once");
        probe(2).count(E::WrongPin);
        assert!(answered.admit().is_ok() && neighbour.admit().is_ok());
        probe(2).count(E::PinBlockInvalid);
        assert_eq!(
            answered.admit().unwrap_err().code,
            E::RateLimited,
            "limit 2"
        );
        // The address is spent too: another till behind it waits as well.
        assert_eq!(neighbour.admit().unwrap_err().code, E::RateLimited);
    }

    #[test]
    fn zero_means_unlimited() {
        let g = Guard::new(0, 0);
        let a = GuardKey::SignOn("10.0.0.1".parse().unwrap());
        for _ in 0..1000 {
            assert!(!g.fail(a));
        }
        assert!(!g.blocked(a));
    }
}
