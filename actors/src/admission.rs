//! Admission: the backlog bound (`dispatch.backlog_limit`) shared by the router, which
//! reserves a slot for each message it accepts, and the providers, which give the slot
//! back when they finish the message. Its own module because both need it and neither
//! may depend on the other's.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The count of accepted messages not yet finished, across providers, against
/// `dispatch.backlog_limit`. Admission reserves a slot before storing; the provider that
/// finishes a message gives its slot back.
#[derive(Debug)]
pub struct Backlog {
    limit: u64,
    pending: AtomicU64,
    /// Told of every slot given back, for a claim waiting for room.
    room: Notify,
}

impl Backlog {
    pub fn new(limit: u64) -> Self {
        Backlog {
            limit,
            pending: AtomicU64::new(0),
            room: Notify::new(),
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

    /// Takes up to `n` of the free slots, and answers how many it took.
    pub fn reserve_up_to(&self, n: u64) -> u64 {
        let mut taken = 0;
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                taken = self.limit.saturating_sub(p).min(n);
                (taken > 0).then_some(p + taken)
            });
        taken
    }

    /// Counts work taken in without a reservation, even beyond the limit: a message
    /// whose retry an operator asked for.
    pub fn add(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self) {
        self.release_many(1);
    }

    /// Gives back `n` slots, reserved and not used.
    pub fn release_many(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        if n > 0 {
            self.room.notify_one();
        }
    }

    /// Returns once a slot has been given back since the last such wait (at once if one
    /// was); one waiter at a time is woken.
    pub async fn room_given_back(&self) {
        self.room.notified().await;
    }

    /// Whether a slot is free.
    pub fn has_room(&self) -> bool {
        self.pending() < self.limit
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn a_reservation_takes_only_the_free_slots_and_gives_back_what_it_did_not_use() {
        let backlog = Backlog::new(10);
        assert!(backlog.try_reserve());
        assert_eq!(backlog.reserve_up_to(4), 4);
        assert_eq!(backlog.reserve_up_to(100), 5, "only the free slots");
        assert_eq!(backlog.reserve_up_to(1), 0);
        assert!(!backlog.try_reserve() && !backlog.has_room());
        backlog.release_many(3);
        assert_eq!(backlog.pending(), 7);
        assert!(backlog.has_room());
        backlog.add(5);
        assert_eq!(backlog.reserve_up_to(1), 0, "over the limit: nothing free");
        backlog.release_many(100);
        assert_eq!(backlog.pending(), 0, "never below zero");
    }
}
