//! Who holds what: every signed-on session and every audit stream, counted
//! per key, per brand and daemon-wide, so that no key and no brand can take
//! what the others need.
//!
//! A session takes its slot only once its proof verifies (a `Hello` names
//! a key but proves nothing, and public keys are not secret), and before
//! the brand's writer is asked for its sign-on answer: a terminal disabled
//! while it signs on is then either refused by the writer or cut by
//! [`Sessions::revoke`], never missed by both. Each session carries a
//! cancellation token; revoking a terminal cancels every one of its
//! sessions at once.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::error::Refusal;
use crate::limits;
use crate::pb::ErrorCode as E;
use crate::state::Principal;

/// The quotas (defaults in [`crate::limits`]; `cardd serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Signed-on sessions of one terminal key.
    pub connections_per_terminal: usize,
    /// Signed-on sessions of one owner key.
    pub connections_per_owner: usize,
    /// Signed-on terminal sessions of one brand (owners not counted).
    pub connections_per_brand: usize,
    /// Sessions of any key, daemon-wide (owners may go past it into their
    /// reserve).
    pub sessions: usize,
    /// Slots only owners may use once `sessions` are all taken.
    pub owner_reserved: usize,
    /// Concurrent audit streams of one key.
    pub audit_streams_per_key: usize,
    /// Concurrent audit streams of one brand.
    pub audit_streams_per_brand: usize,
    /// Concurrent audit streams of the whole daemon.
    pub audit_streams: usize,
    /// MiB per second all audit streams together may send.
    pub audit_mib_per_sec: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        let owner_reserved = limits::DEFAULT_OWNER_RESERVED_CONNECTIONS;
        Quotas {
            connections_per_terminal: limits::DEFAULT_CONNECTIONS_PER_TERMINAL,
            connections_per_owner: limits::DEFAULT_CONNECTIONS_PER_OWNER,
            connections_per_brand: limits::DEFAULT_CONNECTIONS_PER_BRAND,
            sessions: Quotas::sessions_beside(owner_reserved),
            owner_reserved,
            audit_streams_per_key: limits::DEFAULT_AUDIT_STREAMS_PER_KEY,
            audit_streams_per_brand: limits::DEFAULT_AUDIT_STREAMS_PER_BRAND,
            audit_streams: limits::DEFAULT_AUDIT_STREAMS,
            audit_mib_per_sec: limits::DEFAULT_AUDIT_MIB_PER_SEC,
        }
    }
}

impl Quotas {
    /// The ordinary session slots left beside `owner_reserved` and the
    /// sign-on slots, so that the three never add up past MAX_CONNECTIONS.
    pub fn sessions_beside(owner_reserved: usize) -> usize {
        limits::MAX_CONNECTIONS
            .saturating_sub(limits::MAX_PENDING_SIGN_ONS)
            .saturating_sub(owner_reserved)
    }
}

/// Which slots a session took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Ordinary,
    OwnerReserve,
}

/// A signer: one key speaks for one brand and one principal.
type Signer = (u32, Principal);

#[derive(Default)]
struct Counts {
    next_id: u64,
    sessions: HashMap<Signer, HashMap<u64, CancellationToken>>,
    brand_terminals: HashMap<u32, usize>,
    ordinary: usize,
    reserve: usize,
    audit_by_signer: HashMap<Signer, usize>,
    audit_by_brand: HashMap<u32, usize>,
    audit_total: usize,
}

/// The registry of sessions and audit streams, shared by all connections
/// and by the brands' writers (which revoke).
pub struct Sessions {
    quotas: Quotas,
    counts: Mutex<Counts>,
}

/// A signed-on session's slot: released when dropped.
pub struct SessionSlot {
    sessions: Arc<Sessions>,
    id: u64,
    signer: Signer,
    pool: Pool,
    token: CancellationToken,
}

/// An audit stream's slot: released when dropped.
pub struct AuditSlot {
    sessions: Arc<Sessions>,
    signer: Signer,
}

fn quota_exceeded(why: String) -> Refusal {
    Refusal::new(E::QuotaExceeded, why)
}

/// `map[key] -= 1`, forgetting zeros (a map entry per idle key would be
/// memory an attacker could grow).
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Sessions {
    /// An empty registry under `quotas`.
    pub fn new(quotas: Quotas) -> Arc<Sessions> {
        Arc::new(Sessions {
            quotas,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("sessions lock")
    }

    /// Gives a session of `principal` in `brand` its slot, or refuses it
    /// (`QUOTA_EXCEEDED`) when its key, its brand or the daemon is full.
    pub fn admit(
        self: &Arc<Self>,
        brand: u32,
        principal: Principal,
    ) -> Result<SessionSlot, Refusal> {
        let q = &self.quotas;
        let signer = (brand, principal);
        let owner = !matches!(principal, Principal::Terminal(_));
        let mut c = self.lock();
        let held = c.sessions.get(&signer).map_or(0, HashMap::len);
        let per_key = if owner {
            q.connections_per_owner
        } else {
            q.connections_per_terminal
        };
        if held >= per_key {
            return Err(quota_exceeded(format!(
                "this key already holds {held} connections (its quota is {per_key})"
            )));
        }
        let brand_held = c.brand_terminals.get(&brand).copied().unwrap_or(0);
        if !owner && brand_held >= q.connections_per_brand {
            return Err(quota_exceeded(format!(
                "this brand's terminals hold {brand_held} connections (its quota)"
            )));
        }
        let pool = if c.ordinary < q.sessions {
            Pool::Ordinary
        } else if owner && c.reserve < q.owner_reserved {
            Pool::OwnerReserve
        } else {
            return Err(quota_exceeded(
                "the daemon's connections are all taken".into(),
            ));
        };
        match pool {
            Pool::Ordinary => c.ordinary += 1,
            Pool::OwnerReserve => c.reserve += 1,
        }
        if !owner {
            *c.brand_terminals.entry(brand).or_default() += 1;
        }
        c.next_id += 1;
        let id = c.next_id;
        let token = CancellationToken::new();
        c.sessions
            .entry(signer)
            .or_default()
            .insert(id, token.clone());
        Ok(SessionSlot {
            sessions: self.clone(),
            id,
            signer,
            pool,
            token,
        })
    }

    /// Closes every open session of terminal `terminal` of `brand` (it was
    /// just disabled) and returns how many there were. Their slots come
    /// free as the sessions end, within moments.
    pub fn revoke(&self, brand: u32, terminal: u32) -> usize {
        let closed = self.close_all(brand, Principal::Terminal(terminal));
        tracing::warn!(
            brand,
            terminal,
            closed,
            "terminal disabled: its sessions closed"
        );
        closed
    }

    /// Closes every open session of a read-only key of `brand` (it was
    /// just removed) and returns how many there were.
    pub fn revoke_principal(&self, brand: u32, principal: Principal) -> usize {
        let closed = self.close_all(brand, principal);
        tracing::warn!(
            brand,
            ?principal,
            closed,
            "key removed: its sessions closed"
        );
        closed
    }

    fn close_all(&self, brand: u32, principal: Principal) -> usize {
        let signer = (brand, principal);
        let tokens: Vec<CancellationToken> = self
            .lock()
            .sessions
            .get(&signer)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        for t in &tokens {
            t.cancel();
        }
        tokens.len()
    }

    /// Signed-on sessions of `principal` in `brand` right now.
    pub fn sessions_of(&self, brand: u32, principal: Principal) -> usize {
        self.lock()
            .sessions
            .get(&(brand, principal))
            .map_or(0, HashMap::len)
    }

    /// Gives an audit stream of `principal` in `brand` its slot, or refuses
    /// it (`QUOTA_EXCEEDED`) when its key, its brand or the daemon already
    /// runs as many as allowed.
    pub fn audit(self: &Arc<Self>, brand: u32, principal: Principal) -> Result<AuditSlot, Refusal> {
        let q = &self.quotas;
        let signer = (brand, principal);
        let mut c = self.lock();
        let by_key = c.audit_by_signer.get(&signer).copied().unwrap_or(0);
        let by_brand = c.audit_by_brand.get(&brand).copied().unwrap_or(0);
        let full = if by_key >= q.audit_streams_per_key {
            Some(("this key", q.audit_streams_per_key))
        } else if by_brand >= q.audit_streams_per_brand {
            Some(("this brand", q.audit_streams_per_brand))
        } else if c.audit_total >= q.audit_streams {
            Some(("the daemon", q.audit_streams))
        } else {
            None
        };
        if let Some((who, n)) = full {
            return Err(quota_exceeded(format!(
                "{who} already runs {n} audit streams (its quota); wait for one to end"
            )));
        }
        *c.audit_by_signer.entry(signer).or_default() += 1;
        *c.audit_by_brand.entry(brand).or_default() += 1;
        c.audit_total += 1;
        Ok(AuditSlot {
            sessions: self.clone(),
            signer,
        })
    }
}

impl SessionSlot {
    /// Cancelled when the session must end (its terminal was disabled, or
    /// it stalled an audit stream).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        if let Some(s) = c.sessions.get_mut(&self.signer) {
            s.remove(&self.id);
            if s.is_empty() {
                c.sessions.remove(&self.signer);
            }
        }
        match self.pool {
            Pool::Ordinary => c.ordinary = c.ordinary.saturating_sub(1),
            Pool::OwnerReserve => c.reserve = c.reserve.saturating_sub(1),
        }
        if matches!(self.signer.1, Principal::Terminal(_)) {
            decrement(&mut c.brand_terminals, self.signer.0);
        }
    }
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        decrement(&mut c.audit_by_signer, self.signer);
        decrement(&mut c.audit_by_brand, self.signer.0);
        c.audit_total = c.audit_total.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Quotas {
        Quotas {
            connections_per_terminal: 2,
            connections_per_owner: 2,
            connections_per_brand: 3,
            sessions: 4,
            owner_reserved: 2,
            audit_streams_per_key: 1,
            audit_streams_per_brand: 1,
            audit_streams: 2,
            audit_mib_per_sec: 1,
        }
    }

    fn code(r: Result<impl Sized, Refusal>) -> E {
        r.err().expect("refused").code
    }

    #[test]
    fn a_key_over_its_quota_takes_nothing_from_others() {
        let s = Sessions::new(small());
        let a = [
            s.admit(1, Principal::Terminal(1)),
            s.admit(1, Principal::Terminal(1)),
        ];
        assert!(a.iter().all(Result::is_ok));
        assert_eq!(code(s.admit(1, Principal::Terminal(1))), E::QuotaExceeded);
        let b = s.admit(1, Principal::Terminal(2)).expect("another till");
        assert_eq!(
            code(s.admit(1, Principal::Terminal(3))),
            E::QuotaExceeded,
            "the brand holds its 3"
        );
        let other = s.admit(2, Principal::Terminal(1)).expect("another brand");
        assert_eq!(
            code(s.admit(3, Principal::Terminal(1))),
            E::QuotaExceeded,
            "ordinary slots all taken"
        );
        let owners = [s.admit(3, Principal::Owner), s.admit(4, Principal::Owner)];
        assert!(owners.iter().all(Result::is_ok), "the owners' reserve");
        assert_eq!(code(s.admit(5, Principal::Owner)), E::QuotaExceeded);
        drop((b, other));
        assert!(
            s.admit(3, Principal::Terminal(1)).is_ok(),
            "slots come back"
        );
    }

    #[test]
    fn revoking_cancels_every_session_of_the_terminal_only() {
        let s = Sessions::new(small());
        let t = [
            s.admit(1, Principal::Terminal(1)),
            s.admit(1, Principal::Terminal(1)),
        ]
        .map(|r| r.expect("admitted"));
        let other = s.admit(1, Principal::Terminal(2)).expect("admitted");
        assert_eq!(s.revoke(1, 1), 2);
        assert!(t.iter().all(|slot| slot.token().is_cancelled()));
        assert!(!other.token().is_cancelled());
        drop(t);
        assert_eq!(s.sessions_of(1, Principal::Terminal(1)), 0);
    }

    #[test]
    fn audit_streams_are_counted_per_key_brand_and_daemon() {
        let s = Sessions::new(small());
        let first = s.audit(1, Principal::Owner).expect("first");
        assert_eq!(code(s.audit(1, Principal::Owner)), E::QuotaExceeded);
        let second = s.audit(2, Principal::Owner).expect("another brand");
        assert_eq!(code(s.audit(3, Principal::Owner)), E::QuotaExceeded);
        drop(first);
        assert!(s.audit(1, Principal::Owner).is_ok());
        drop(second);
    }
}
