//! Byte budgets: how many bytes of payloads memory may hold for one use (request bodies at
//! ingest, bodies held for deliveries). A [`Share`] is a part of a budget; attached to a
//! payload ([`Share::attach`]) it is given back when the last copy of that payload is
//! dropped, wherever that happens (in the store's write queue, in a delivery's request).
//!
//! Knows nothing of HTTP or the store: callers decide what to do when a budget is full
//! (answer `503`, leave a body in the store).
//!
//! Also: giving freed memory back to the system after a large, passing use ([`give_back_freed`]).

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// A number of bytes shared by every holder of a clone.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Tasks waiting in [`Budget::take`], so that giving bytes back costs no lock when none
    /// is.
    waiting: AtomicUsize,
    /// Wakes them when bytes are given back.
    freed: Notify,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// `n` bytes if they fit now; never waits.
    pub fn try_take(self: &Arc<Self>, n: usize) -> Option<Share> {
        self.take_if(n, false)
    }

    /// `n` bytes, waiting until they fit. When nothing else is held they are given even if
    /// `n` is over the limit, so that a body larger than the budget is still let through
    /// (alone).
    pub async fn take(self: &Arc<Self>, n: usize) -> Share {
        if let Some(share) = self.take_if(n, true) {
            return share;
        }
        let _waiting = Waiting::count(&self.waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check and the wait
            // is not missed.
            freed.as_mut().enable();
            if let Some(share) = self.take_if(n, true) {
                return share;
            }
            freed.await;
        }
    }

    fn take_if(self: &Arc<Self>, n: usize, alone_over_limit: bool) -> Option<Share> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let fits = used.checked_add(n).is_some_and(|total| total <= self.limit);
                (fits || (alone_over_limit && used == 0)).then(|| used.saturating_add(n))
            })
            .ok()
            .map(|_| Share {
                budget: self.clone(),
                n,
            })
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::SeqCst);
            // A waiter counted after this read checks `used` after the subtraction.
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.freed.notify_waiters();
            }
        }
    }
}

/// One task counted in [`Budget::waiting`] until this is dropped, however its wait ends (the
/// caller may drop the future).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes taken from a budget; given back when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    n: usize,
}

impl Share {
    pub fn bytes(&self) -> usize {
        self.n
    }

    /// Gives back what is over `n`.
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.n {
            self.budget.give_back(self.n - n);
            self.n = n;
        }
    }

    /// Takes `more` bytes as well, if they fit now.
    pub fn try_grow(&mut self, more: usize) -> bool {
        match self.budget.try_take(more) {
            Some(extra) => {
                self.n += extra.n;
                std::mem::forget(extra);
                true
            }
            None => false,
        }
    }

    /// `payload` (the same bytes, not a copy) holding this share until its last clone is
    /// dropped.
    pub fn attach(self, payload: Bytes) -> Bytes {
        Bytes::from_owner(Held {
            payload,
            _share: self,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.give_back(self.n);
    }
}

/// A payload with the share of a budget it holds.
struct Held {
    payload: Bytes,
    _share: Share,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// Gives the memory freed so far back to the system. mimalloc keeps freed pages for reuse, and
/// loading a large config frees most of what it touched (the YAML parser's events take several
/// times the file's size): called once the config is loaded, this brings the resident size of
/// a process with 10,000 flows from about 170 MB down to what it uses.
pub fn give_back_freed() {
    // SAFETY: takes no pointer and only returns pages mimalloc holds unused; where mimalloc is
    // not the global allocator (the test binaries) it has little or nothing to give back.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_given_back_when_the_last_copy_of_its_payload_goes() {
        let budget = Budget::new(10);
        let payload = budget
            .try_take(6)
            .unwrap()
            .attach(Bytes::from_static(b"abcdef"));
        let copy = payload.slice(1..3);
        assert_eq!(budget.used(), 6);
        assert!(budget.try_take(5).is_none(), "6 + 5 is over 10");
        drop(payload);
        assert_eq!(budget.used(), 6, "a slice still holds the payload");
        assert_eq!(&copy[..], b"bc");
        drop(copy);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_take(10).is_some());
    }

    #[test]
    fn a_share_shrinks_and_grows_within_the_limit() {
        let budget = Budget::new(10);
        let mut share = budget.try_take(8).unwrap();
        share.shrink_to(3);
        assert_eq!((share.bytes(), budget.used()), (3, 3));
        assert!(share.try_grow(7));
        assert!(!share.try_grow(1));
        assert_eq!(budget.used(), 10);
        drop(share);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn take_waits_for_room_and_lets_an_oversized_body_through_alone() {
        let budget = Budget::new(10);
        let held = budget.try_take(8).unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(5).await.bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), 5);
        assert_eq!(budget.used(), 0);
        let big = budget.take(25).await;
        assert_eq!(
            budget.used(),
            25,
            "alone, a body over the limit is let through"
        );
        assert!(budget.try_take(1).is_none());
        drop(big);
    }
}
