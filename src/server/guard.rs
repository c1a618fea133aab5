//! Failure budgets per address and per terminal.
//!
//! A legitimate till signs on rarely and almost never names a card that
//! does not exist; an attacker guessing keys or card numbers does both all
//! the time. Each key (an address, a terminal) may fail `limit` times per
//! minute; past that it is refused for a cooldown. Memory is bounded: past
//! MAX_GUARD_ENTRIES the entries with the oldest windows are forgotten.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::{MAX_GUARD_ENTRIES, RATE_LIMIT_COOLDOWN_SECS};

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardKey {
    /// A peer address: sign-on failures.
    SignOn(IpAddr),
    /// A peer address: card misses.
    CardMissAddr(IpAddr),
    /// A terminal (brand, terminal id): card misses.
    CardMissTerminal(u32, u32),
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
}

impl Guard {
    /// A guard with these per-minute limits (0 = unlimited).
    pub fn new(sign_on_limit: u32, card_miss_limit: u32) -> Self {
        Guard {
            entries: Mutex::new(HashMap::new()),
            sign_on_limit,
            card_miss_limit,
        }
    }

    fn limit(&self, key: &GuardKey) -> u32 {
        match key {
            GuardKey::SignOn(_) => self.sign_on_limit,
            _ => self.card_miss_limit,
        }
    }

    /// True while `key` is blocked.
    pub fn blocked(&self, key: GuardKey) -> bool {
        let now = Instant::now();
        let entries = self.entries.lock().expect("guard lock");
        entries
            .get(&key)
            .and_then(|e| e.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts one failure; returns true if `key` is now blocked.
    pub fn fail(&self, key: GuardKey) -> bool {
        let limit = self.limit(&key);
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("guard lock");
        if entries.len() >= MAX_GUARD_ENTRIES && !entries.contains_key(&key) {
            // Forget every entry whose window and block are over; if that
            // frees nothing, forget the oldest windows.
            entries.retain(|_, e| {
                now.duration_since(e.window_start) < Duration::from_secs(60)
                    || e.blocked_until.is_some_and(|u| now < u)
            });
            if entries.len() >= MAX_GUARD_ENTRIES {
                let mut starts: Vec<Instant> = entries.values().map(|e| e.window_start).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                entries.retain(|_, e| e.window_start > cutoff);
            }
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
            e.blocked_until = Some(now + Duration::from_secs(RATE_LIMIT_COOLDOWN_SECS));
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
    fn zero_means_unlimited() {
        let g = Guard::new(0, 0);
        let a = GuardKey::SignOn("10.0.0.1".parse().unwrap());
        for _ in 0..1000 {
            assert!(!g.fail(a));
        }
        assert!(!g.blocked(a));
    }
}
