//! Admission: the backlog bound (`dispatch.backlog_limit`) shared by the router, which
//! reserves a slot for each message it accepts and counts those it claims, and the
//! providers, which give the slot back when they have finished the message and its
//! records are in the database. Its own module because both need it and neither may
//! depend on the other's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The count of accepted messages not yet finished, across providers, against
/// `dispatch.backlog_limit`. Admission reserves a slot before storing; the provider that
/// finishes a message gives its slot back once the message's records have landed.
#[derive(Debug)]
pub struct Backlog {
    limit: u64,
    pending: AtomicU64,
    /// Told of every slot given back, for a claim waiting for room.
    room: Notify,
    /// Messages accepted earlier wait in the database for room (a claim met the backlog
    /// full with some left): they are part of the backlog, so new messages are refused.
    earlier_waiting: AtomicBool,
}

impl Backlog {
    pub fn new(limit: u64) -> Self {
        Backlog {
            limit,
            pending: AtomicU64::new(0),
            room: Notify::new(),
            earlier_waiting: AtomicBool::new(false),
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

    /// Counts work taken in without a reservation, even beyond the limit: a message
    /// whose retry an operator asked for, or messages a claim took as far as `free`
    /// said there was room (new messages accepted meanwhile may take it past the limit
    /// by as many as were accepted during the claim's write).
    pub fn add(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        self.room.notify_one();
    }

    /// Returns once a slot has been given back since the last such wait (at once if one
    /// was); one waiter at a time is woken.
    pub async fn room_given_back(&self) {
        self.room.notified().await;
    }

    /// Whether a slot is free.
    pub fn has_room(&self) -> bool {
        self.free() > 0
    }

    /// How many slots are free now.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.pending())
    }

    /// Whether messages accepted earlier wait in the database for room.
    pub fn earlier_waiting(&self) -> bool {
        self.earlier_waiting.load(Ordering::Acquire)
    }

    /// What the last claim found: messages left in the database at a full backlog.
    pub fn set_earlier_waiting(&self, waiting: bool) {
        self.earlier_waiting.store(waiting, Ordering::Release);
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn free_slots_are_the_limit_less_what_is_pending_and_never_below_zero() {
        let backlog = Backlog::new(10);
        assert!(backlog.try_reserve());
        backlog.add(4);
        assert_eq!(backlog.free(), 5);
        backlog.add(10);
        assert_eq!(backlog.free(), 0, "over the limit: nothing free");
        assert!(!backlog.try_reserve() && !backlog.has_room());
        for _ in 0..14 {
            backlog.release();
        }
        assert!(backlog.has_room());
        assert_eq!(backlog.free(), 9);
        backlog.release();
        backlog.release();
        assert_eq!(backlog.pending(), 0, "never below zero");
    }
}
