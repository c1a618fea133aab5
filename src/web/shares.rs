//! Each brand's share of what the web page bounds for all brands together
//! (page reads, HTTP connections): one brand's read keys or scripts take
//! at most their share, never every slot another brand's owner needs
//! (`WEB_READS_PER_BRAND`, `WEB_CONNECTIONS_PER_BRAND`, docs/security.md).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A semaphore of `share` permits per brand, made when a brand first asks
/// and forgotten once no permit of it is out or awaited.
pub struct Shares {
    share: usize,
    brands: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

impl Shares {
    /// `share` permits for each brand.
    pub fn new(share: usize) -> Self {
        Shares {
            share,
            brands: Mutex::new(HashMap::new()),
        }
    }

    /// The brand's semaphore. Idle brands' are dropped here: a semaphore
    /// only the table holds has no permit out and nobody waiting (each
    /// permit and each wait holds a clone), so the table stays as small as
    /// the brands in use.
    fn of(&self, brand: u32) -> Arc<Semaphore> {
        // A panic while holding it left whole entries only: go on.
        let mut brands = self.brands.lock().unwrap_or_else(|e| e.into_inner());
        brands.retain(|_, s| Arc::strong_count(s) > 1);
        brands
            .entry(brand)
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
            .clone()
    }

    /// One of the brand's permits, waiting for it (in turn with the
    /// brand's other waiters only).
    pub async fn take(&self, brand: u32) -> OwnedSemaphorePermit {
        self.of(brand)
            .acquire_owned()
            .await
            .expect("a share's semaphore is never closed")
    }

    /// One of the brand's permits if one is free now.
    pub fn try_take(&self, brand: u32) -> Option<OwnedSemaphorePermit> {
        self.of(brand).try_acquire_owned().ok()
    }

    /// Brands with a permit out or awaited.
    #[cfg(test)]
    fn brands_in_use(&self) -> usize {
        let brands = self.brands.lock().unwrap_or_else(|e| e.into_inner());
        brands.values().filter(|s| Arc::strong_count(s) > 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brand_takes_its_share_and_no_more_and_others_keep_theirs() {
        let shares = Shares::new(2);
        let held: Vec<_> = (0..2)
            .map(|_| shares.try_take(7).expect("its share"))
            .collect();
        assert!(shares.try_take(7).is_none(), "past its share");
        assert!(shares.try_take(8).is_some(), "another brand's share");
        drop(held);
        assert!(shares.try_take(7).is_some(), "given back");
        assert_eq!(shares.brands_in_use(), 0, "idle brands are forgotten");
    }
}
