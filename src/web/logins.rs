//! Web login links and web sessions, in the daemon's memory only: a
//! restart ends every session and voids every unused link (docs/web.md).
//!
//! Both are looked up by the SHA-256 of their secret, so the table holds
//! nothing a memory dump could replay, and a lookup compares digests, not
//! the secret itself. Every table is bounded (`WEB_*` in `limits.rs`).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::Refusal;
use crate::limits::{
    WEB_LINKS_PER_KEY, WEB_LOGIN_TOKEN_SECS, WEB_MAX_PENDING_LOGINS, WEB_MAX_PER_BRAND,
    WEB_MAX_SESSIONS, WEB_SESSION_IDLE_SECS, WEB_SESSION_SECS,
};
use crate::pb::ErrorCode as E;
use crate::state::Principal;

/// Who a link or session speaks for: a brand and a reading role (owner,
/// auditor, or one store's manager), and the key that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The brand whose books it shows.
    pub brand: u32,
    /// Owner, auditor or store manager (its store inside).
    pub principal: Principal,
    /// The signer's public key (its link budget).
    pub key: [u8; 32],
}

impl Grant {
    /// The store a store manager is held to; `None` for owner and auditor.
    pub fn scope(&self) -> Option<u32> {
        match self.principal {
            Principal::StoreManager(_, store) => Some(store),
            _ => None,
        }
    }
}

/// A fresh link: its secret (hex) and when it lapses (Unix ms).
pub struct Link {
    /// 64 hex digits; shown once, stored only as a digest.
    pub token: String,
    /// Unix milliseconds after which it is void.
    pub expires_ms: u64,
}

/// Why opening a link gave no session.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Unknown, already used or expired (told apart to no one).
    Invalid,
    /// `WEB_MAX_SESSIONS` are open.
    Full,
}

struct Pending {
    grant: Grant,
    until: Instant,
}

struct Session {
    grant: Grant,
    until: Instant,
    idle_until: Instant,
}

#[derive(Default)]
struct Tables {
    links: HashMap<[u8; 32], Pending>,
    sessions: HashMap<[u8; 32], Session>,
    /// Per key: when its current window began and links asked in it.
    asked: HashMap<[u8; 32], (Instant, u32)>,
}

/// The daemon's links and sessions.
#[derive(Default)]
pub struct Logins {
    tables: Mutex<Tables>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn fresh_secret() -> ([u8; 32], String) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let text = hex::encode(secret);
    (digest(text.as_bytes()), text)
}

fn unix_ms(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + after).as_millis()).unwrap_or(u64::MAX)
}

impl Tables {
    fn forget_expired(&mut self, now: Instant) {
        self.links.retain(|_, p| p.until > now);
        self.sessions
            .retain(|_, s| s.until > now && s.idle_until > now);
        let window = Duration::from_secs(WEB_LOGIN_TOKEN_SECS);
        self.asked.retain(|_, (since, _)| now < *since + window);
    }
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding it left whole entries only: go on.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new single-use link for `grant`, valid `WEB_LOGIN_TOKEN_SECS`;
    /// refused past the key's budget or the table's bound.
    pub fn issue(&self, grant: Grant) -> Result<Link, Refusal> {
        self.issue_at(grant, Instant::now())
    }

    fn issue_at(&self, grant: Grant, now: Instant) -> Result<Link, Refusal> {
        let mut t = self.lock();
        t.forget_expired(now);
        let asked = t.asked.get(&grant.key).map_or(0, |(_, n)| *n);
        if asked >= WEB_LINKS_PER_KEY {
            return Err(Refusal::new(
                E::RateLimited,
                format!(
                    "at most {WEB_LINKS_PER_KEY} web login links per key in \
                     {WEB_LOGIN_TOKEN_SECS} s; use one already given or wait"
                ),
            ));
        }
        let brand_links = t.links.values().filter(|p| p.grant.brand == grant.brand);
        if brand_links.count() >= WEB_MAX_PER_BRAND {
            return Err(Refusal::new(
                E::QuotaExceeded,
                format!(
                    "this brand has {WEB_MAX_PER_BRAND} unused web login links; \
                     use one or try again in a few minutes"
                ),
            ));
        }
        if t.links.len() >= WEB_MAX_PENDING_LOGINS {
            return Err(Refusal::new(
                E::QuotaExceeded,
                "too many unused web login links; try again in a few minutes",
            ));
        }
        t.asked.entry(grant.key).or_insert((now, 0)).1 += 1;
        let life = Duration::from_secs(WEB_LOGIN_TOKEN_SECS);
        let (id, token) = fresh_secret();
        t.links.insert(
            id,
            Pending {
                grant,
                until: now + life,
            },
        );
        Ok(Link {
            token,
            expires_ms: unix_ms(life),
        })
    }

    /// The grant of a link not yet used nor expired; the link stays
    /// unused (the confirmation page shows whom it signs in as).
    pub fn pending(&self, token: &str) -> Option<Grant> {
        let mut t = self.lock();
        t.forget_expired(Instant::now());
        t.links.get(&digest(token.as_bytes())).map(|p| p.grant)
    }

    /// Uses a link (once): a new session's cookie value and its grant.
    pub fn open(&self, token: &str) -> Result<(String, Grant), Refused> {
        self.open_at(token, Instant::now())
    }

    fn open_at(&self, token: &str, now: Instant) -> Result<(String, Grant), Refused> {
        let mut t = self.lock();
        t.forget_expired(now);
        let id = digest(token.as_bytes());
        let Some(brand) = t.links.get(&id).map(|p| p.grant.brand) else {
            return Err(Refused::Invalid);
        };
        // A link refused for want of room stays usable until it expires.
        let of_brand = t.sessions.values().filter(|s| s.grant.brand == brand);
        if of_brand.count() >= WEB_MAX_PER_BRAND || t.sessions.len() >= WEB_MAX_SESSIONS {
            return Err(Refused::Full);
        }
        let Some(pending) = t.links.remove(&id) else {
            return Err(Refused::Invalid);
        };
        let (id, cookie) = fresh_secret();
        t.sessions.insert(
            id,
            Session {
                grant: pending.grant,
                until: now + Duration::from_secs(WEB_SESSION_SECS),
                idle_until: now + Duration::from_secs(WEB_SESSION_IDLE_SECS),
            },
        );
        Ok((cookie, pending.grant))
    }

    /// The grant of a live session (its idle time restarts), or `None`.
    pub fn session(&self, cookie: &str) -> Option<Grant> {
        self.session_at(cookie, Instant::now())
    }

    fn session_at(&self, cookie: &str, now: Instant) -> Option<Grant> {
        let mut t = self.lock();
        let s = t.sessions.get_mut(&digest(cookie.as_bytes()))?;
        if s.until <= now || s.idle_until <= now {
            t.sessions.remove(&digest(cookie.as_bytes()));
            return None;
        }
        s.idle_until = now + Duration::from_secs(WEB_SESSION_IDLE_SECS);
        Some(s.grant)
    }

    /// Ends a session (logout, or its key was removed).
    pub fn end(&self, cookie: &str) {
        self.lock().sessions.remove(&digest(cookie.as_bytes()));
    }

    /// Sessions open now (for tests and the log).
    pub fn sessions_open(&self) -> usize {
        self.lock().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(key: u8) -> Grant {
        Grant {
            brand: 1,
            principal: Principal::StoreManager(3, 2),
            key: [key; 32],
        }
    }

    #[test]
    fn a_link_opens_one_session_once() {
        let logins = Logins::default();
        let link = logins.issue(grant(1)).unwrap();
        assert_eq!(link.token.len(), 64);
        // Looking at a link does not spend it.
        assert_eq!(logins.pending(&link.token), Some(grant(1)));
        assert_eq!(logins.pending(&link.token), Some(grant(1)));
        let (cookie, g) = logins.open(&link.token).unwrap();
        assert_eq!(logins.pending(&link.token), None);
        assert_eq!(g.scope(), Some(2));
        assert_eq!(logins.open(&link.token), Err(Refused::Invalid));
        assert_eq!(logins.session(&cookie), Some(grant(1)));
        assert_eq!(logins.session("not a cookie"), None);
        logins.end(&cookie);
        assert_eq!(logins.session(&cookie), None);
        assert_eq!(logins.sessions_open(), 0);
    }

    #[test]
    fn links_and_sessions_expire() {
        let logins = Logins::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // A link unused for its whole life is void.
        let late = logins.issue_at(grant(1), t0).unwrap();
        let after = t0 + secs(WEB_LOGIN_TOKEN_SECS + 1);
        assert_eq!(logins.open_at(&late.token, after), Err(Refused::Invalid));
        // A session unused for the idle time ends; one in use lives on, but
        // not past its whole life.
        let idle = logins.issue_at(grant(1), t0).unwrap();
        let (idle, _) = logins.open_at(&idle.token, t0).unwrap();
        let used = logins.issue_at(grant(1), t0).unwrap();
        let (used, _) = logins.open_at(&used.token, t0).unwrap();
        let step = secs(WEB_SESSION_IDLE_SECS - 60);
        let mut now = t0;
        while now + step < t0 + secs(WEB_SESSION_SECS) {
            now += step;
            assert!(logins.session_at(&used, now).is_some());
        }
        assert_eq!(logins.session_at(&idle, now), None);
        let end = t0 + secs(WEB_SESSION_SECS);
        assert_eq!(logins.session_at(&used, end), None);
    }

    fn grant_of(brand: u32, key: u8) -> Grant {
        Grant {
            brand,
            ..grant(key)
        }
    }

    /// One brand's many keys cannot take the links or sessions every
    /// brand shares; a link refused for want of room is not spent.
    #[test]
    fn one_brand_holds_at_most_its_share_of_links_and_sessions() {
        let logins = Logins::default();
        let keys = (WEB_MAX_PER_BRAND / WEB_LINKS_PER_KEY as usize + 1) as u8;
        let mut links = Vec::new();
        for key in 0..keys {
            for _ in 0..WEB_LINKS_PER_KEY {
                match logins.issue(grant_of(1, key)) {
                    Ok(link) => links.push(link),
                    Err(refused) => assert_eq!(refused.code, E::QuotaExceeded),
                }
            }
        }
        assert_eq!(links.len(), WEB_MAX_PER_BRAND);
        assert!(
            logins.issue(grant_of(2, 202)).is_ok(),
            "another brand's link"
        );
        // Brand 1 fills its sessions; its last link waits, unspent.
        let spare = links.pop().unwrap();
        let mut cookies: Vec<String> = Vec::new();
        for link in &links {
            cookies.push(logins.open(&link.token).unwrap().0);
        }
        let last = logins.issue(grant_of(1, 200)).unwrap();
        cookies.push(logins.open(&last.token).unwrap().0);
        assert_eq!(cookies.len(), WEB_MAX_PER_BRAND);
        assert_eq!(logins.open(&spare.token), Err(Refused::Full));
        assert_eq!(logins.open(&spare.token), Err(Refused::Full), "not spent");
        logins.end(&cookies[0]);
        assert!(
            logins.open(&spare.token).is_ok(),
            "the refused link stays usable"
        );
        let other = logins.issue(grant_of(2, 201)).unwrap();
        assert!(logins.open(&other.token).is_ok(), "another brand's session");
    }

    #[test]
    fn a_key_asks_for_a_bounded_number_of_links() {
        let logins = Logins::default();
        for _ in 0..WEB_LINKS_PER_KEY {
            logins.issue(grant(1)).unwrap();
        }
        let refused = logins.issue(grant(1)).err().unwrap();
        assert_eq!(refused.code, E::RateLimited);
        // Another key's budget is its own.
        assert!(logins.issue(grant(2)).is_ok());
        // The budget comes back once its window has passed.
        let later = Instant::now() + Duration::from_secs(WEB_LOGIN_TOKEN_SECS + 1);
        assert!(logins.issue_at(grant(1), later).is_ok());
    }
}
