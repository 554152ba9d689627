//! Admission: the backlog bound (`dispatch.backlog_limit`) shared by the router, which
//! reserves a slot for each message it accepts, and the providers, which give the slot
//! back when they finish the message. Its own module because both need it and neither
//! may depend on the other's.

use std::sync::atomic::{AtomicU64, Ordering};

/// The count of accepted messages not yet finished, across providers, against
/// `dispatch.backlog_limit`. Admission reserves a slot before storing; the provider that
/// finishes a message gives its slot back.
#[derive(Debug)]
pub struct Backlog {
    limit: u64,
    pending: AtomicU64,
}

impl Backlog {
    pub fn new(limit: u64) -> Self {
        Backlog {
            limit,
            pending: AtomicU64::new(0),
        }
    }

    /// Takes a slot if one is free.
    pub fn try_reserve(&self) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < self.limit).then_some(p + 1)
            })
            .is_ok()
    }

    /// Counts recovered work, even beyond the limit: it was accepted before.
    pub fn add(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }
}
