//! The circuit breaker (CONTRACT 4.4) as a plain state machine. Time is passed in (`now`)
//! rather than read, so tests drive it with a fake clock; the `ProviderActor` owns one and
//! feeds it real instants.
//!
//! - `closed`: admits every call and records success/failure of the last `window_size`
//!   calls; with at least `minimum_calls` recorded and a failure rate at or above the
//!   threshold, it opens.
//! - `open`: admits nothing for `open`, then turns `half_open`.
//! - `half_open`: admits `half_open_calls` trial calls and decides only once all of them
//!   have finished: below the threshold it closes (fresh window), else it opens again.
//!   It waits for its trials however long traffic takes to bring them.
//!
//! Rate-limited (429) results are never recorded; a trial that ends in one gives its slot
//! back. Each call carries the generation it was admitted in; a result from an older
//! generation (admitted before the last transition, or before an operator's `closed`
//! started a fresh window) is ignored, so a slow call from before an opening can neither
//! close nor reopen the breaker.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub window_size: u32,
    pub minimum_calls: u32,
    pub failure_rate_threshold: f64,
    pub open: Duration,
    pub half_open_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    /// An operator's: admits nothing until set back (CONTRACT section 11).
    ForcedOpen,
    /// An operator's: admits everything and records nothing.
    Disabled,
}

impl BreakerState {
    pub const ALL: [BreakerState; 5] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }

    fn forced(self) -> bool {
        matches!(self, BreakerState::ForcedOpen | BreakerState::Disabled)
    }
}

/// What an operator sets a breaker to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Override {
    ForcedOpen,
    Disabled,
    /// Back to normal operation, with a fresh window.
    Closed,
}

impl Override {
    pub fn as_str(self) -> &'static str {
        match self {
            Override::ForcedOpen => "forced_open",
            Override::Disabled => "disabled",
            Override::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<Override> {
        match raw {
            "forced_open" => Some(Override::ForcedOpen),
            "disabled" => Some(Override::Disabled),
            "closed" => Some(Override::Closed),
            _ => None,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    Failure,
    /// Rate-limited: neither success nor failure.
    Neutral,
}

/// Proof that a call was admitted, and in which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    generation: u64,
    /// When the current state began.
    since: Instant,
    /// Closed: recorded outcomes, `true` for a failure, oldest first.
    window: VecDeque<bool>,
    window_failures: u32,
    /// Half-open: trials admitted and not given back, and the results of those finished.
    trials_admitted: u32,
    trials_finished: u32,
    trial_failures: u32,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            generation: 0,
            since: now,
            window: VecDeque::with_capacity(config.window_size as usize),
            window_failures: 0,
            trials_admitted: 0,
            trials_finished: 0,
            trial_failures: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Outcomes currently counted toward a verdict: the closed window, or the finished
    /// trials while half-open.
    pub fn recorded_calls(&self) -> u32 {
        match self.state {
            BreakerState::Closed => self.window.len() as u32,
            BreakerState::HalfOpen => self.trials_finished,
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => 0,
        }
    }

    /// Failures among `recorded_calls`, as a fraction (0 when nothing is recorded).
    pub fn failure_rate(&self) -> f64 {
        let (failures, recorded) = match self.state {
            BreakerState::Closed => (self.window_failures, self.window.len() as u32),
            BreakerState::HalfOpen => (self.trial_failures, self.trials_finished),
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => (0, 0),
        };
        if recorded == 0 {
            0.0
        } else {
            f64::from(failures) / f64::from(recorded)
        }
    }

    /// When time alone will next change something: only the end of `open`. Half-open
    /// has no time limit: it decides when its trials have finished, however slowly
    /// traffic brings them (a limit reopened a lightly used provider whose trials all
    /// succeeded, and every message then waited `open_ms`).
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open => Some(self.since + self.config.open),
            BreakerState::Closed
            | BreakerState::HalfOpen
            | BreakerState::ForcedOpen
            | BreakerState::Disabled => None,
        }
    }

    /// Applies the transitions that time alone causes.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Open if now >= self.since + self.config.open => {
                Some(self.move_to(BreakerState::HalfOpen, now))
            }
            _ => None,
        }
    }

    /// Asks to make a call now. `None` means the call must wait.
    pub fn try_acquire(&mut self, now: Instant) -> (Option<Permit>, Option<Transition>) {
        let transition = self.tick(now);
        let permit = match self.state {
            BreakerState::Closed | BreakerState::Disabled => Some(self.permit()),
            BreakerState::Open | BreakerState::ForcedOpen => None,
            BreakerState::HalfOpen if self.trials_admitted < self.config.half_open_calls => {
                self.trials_admitted += 1;
                Some(self.permit())
            }
            BreakerState::HalfOpen => None,
        };
        (permit, transition)
    }

    /// Reports how an admitted call ended.
    pub fn record(
        &mut self,
        permit: Permit,
        result: CallResult,
        now: Instant,
    ) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        match (self.state, result) {
            // Disabled records nothing; forced open admitted nothing of this generation.
            (BreakerState::Disabled | BreakerState::ForcedOpen, _) => None,
            (BreakerState::Closed, CallResult::Neutral) => None,
            (BreakerState::Closed, result) => {
                let failed = result == CallResult::Failure;
                self.window.push_back(failed);
                self.window_failures += u32::from(failed);
                if self.window.len() > self.config.window_size as usize {
                    let dropped = self.window.pop_front().unwrap_or(false);
                    self.window_failures -= u32::from(dropped);
                }
                let recorded = self.window.len() as u32;
                (recorded >= self.config.minimum_calls
                    && self.failure_rate() >= self.config.failure_rate_threshold)
                    .then(|| self.move_to(BreakerState::Open, now))
            }
            (BreakerState::HalfOpen, CallResult::Neutral) => {
                self.trials_admitted = self.trials_admitted.saturating_sub(1);
                None
            }
            (BreakerState::HalfOpen, result) => {
                self.trials_finished += 1;
                self.trial_failures += u32::from(result == CallResult::Failure);
                if self.trials_finished < self.config.half_open_calls {
                    return None;
                }
                let to = if self.failure_rate() < self.config.failure_rate_threshold {
                    BreakerState::Closed
                } else {
                    BreakerState::Open
                };
                Some(self.move_to(to, now))
            }
            // No permit of the current generation exists while open.
            (BreakerState::Open, _) => None,
        }
    }

    /// An operator's setting: `forced_open` and `disabled` hold until set back; `closed`
    /// returns to normal with a fresh window, from a tripped `open` and from `closed`
    /// itself (the failures counted so far are forgotten). `None` when the state stays.
    pub fn force(&mut self, to: Override, now: Instant) -> Option<Transition> {
        let target = match to {
            Override::ForcedOpen => BreakerState::ForcedOpen,
            Override::Disabled => BreakerState::Disabled,
            Override::Closed => BreakerState::Closed,
        };
        if self.state != target {
            return Some(self.move_to(target, now));
        }
        if target == BreakerState::Closed {
            self.move_to(target, now);
        }
        None
    }

    /// Whether an operator holds this breaker where it is.
    pub fn is_forced(&self) -> bool {
        self.state.forced()
    }

    fn permit(&self) -> Permit {
        Permit {
            generation: self.generation,
        }
    }

    fn move_to(&mut self, to: BreakerState, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.since = now;
        self.window.clear();
        self.window_failures = 0;
        self.trials_admitted = 0;
        self.trials_finished = 0;
        self.trial_failures = 0;
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window_size: 10,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            open: 100 * MS,
            half_open_calls: 3,
        }
    }

    fn call(b: &mut Breaker, result: CallResult, now: Instant) -> Option<Transition> {
        let (permit, _) = b.try_acquire(now);
        b.record(permit.expect("admitted"), result, now)
    }

    fn open_it(b: &mut Breaker, now: Instant) {
        for _ in 0..4 {
            call(b, CallResult::Failure, now);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn no_verdict_before_minimum_calls() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        for _ in 0..3 {
            assert_eq!(call(&mut b, CallResult::Failure, t), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failure_rate(), 1.0);
        let opened = call(&mut b, CallResult::Failure, t);
        assert_eq!(
            opened,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
    }

    #[test]
    fn it_opens_at_the_threshold_not_below() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        for result in [
            CallResult::Success,
            CallResult::Success,
            CallResult::Failure,
        ] {
            call(&mut b, result, t);
        }
        // 1 failure of 4 = 0.25: below the threshold.
        assert_eq!(call(&mut b, CallResult::Success, t), None);
        call(&mut b, CallResult::Failure, t); // 2 of 5 = 0.4
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(call(&mut b, CallResult::Failure, t).is_some()); // 3 of 6 = 0.5
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn the_window_forgets_old_outcomes() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        call(&mut b, CallResult::Failure, t);
        for _ in 0..9 {
            call(&mut b, CallResult::Success, t);
        }
        assert_eq!(b.recorded_calls(), 10);
        assert_eq!(b.failure_rate(), 0.1);
        call(&mut b, CallResult::Success, t);
        assert_eq!(
            b.recorded_calls(),
            10,
            "the window holds window_size outcomes"
        );
        assert_eq!(b.failure_rate(), 0.0, "the failure fell out of the window");
    }

    #[test]
    fn rate_limits_are_never_recorded() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        for _ in 0..50 {
            assert_eq!(call(&mut b, CallResult::Neutral, t), None);
        }
        assert_eq!(b.recorded_calls(), 0);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_until_open_time_has_passed() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        open_it(&mut b, t);
        assert_eq!(b.try_acquire(t + 99 * MS), (None, None));
        assert_eq!(b.deadline(), Some(t + 100 * MS));
        let (permit, transition) = b.try_acquire(t + 100 * MS);
        assert!(permit.is_some());
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
    }

    #[test]
    fn half_open_admits_its_trials_and_waits_for_all_of_them() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        open_it(&mut b, t);
        let t1 = t + 100 * MS;
        let permits: Vec<Permit> = (0..3)
            .map(|_| b.try_acquire(t1).0.expect("trial"))
            .collect();
        assert_eq!(b.try_acquire(t1).0, None, "only three trials");
        assert_eq!(b.record(permits[0], CallResult::Success, t1), None);
        assert_eq!(
            b.record(permits[1], CallResult::Success, t1),
            None,
            "one lucky call decides nothing"
        );
        let closed = b.record(permits[2], CallResult::Failure, t1);
        // 1 failure of 3 = 0.33, below 0.5.
        assert_eq!(closed.map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.recorded_calls(), 0, "a fresh window");
    }

    #[test]
    fn failing_trials_reopen_it() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        open_it(&mut b, t);
        let t1 = t + 100 * MS;
        let permits: Vec<Permit> = (0..3)
            .map(|_| b.try_acquire(t1).0.expect("trial"))
            .collect();
        b.record(permits[0], CallResult::Failure, t1);
        b.record(permits[1], CallResult::Failure, t1);
        let reopened = b.record(permits[2], CallResult::Success, t1);
        assert_eq!(reopened.map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(b.deadline(), Some(t1 + 100 * MS), "open time starts again");
    }

    #[test]
    fn a_rate_limited_trial_gives_its_slot_back() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        open_it(&mut b, t);
        let t1 = t + 100 * MS;
        let permits: Vec<Permit> = (0..3)
            .map(|_| b.try_acquire(t1).0.expect("trial"))
            .collect();
        assert_eq!(b.record(permits[0], CallResult::Neutral, t1), None);
        let extra = b.try_acquire(t1).0.expect("the slot came back");
        b.record(permits[1], CallResult::Success, t1);
        b.record(permits[2], CallResult::Success, t1);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "two of three trials finished"
        );
        assert_eq!(
            b.record(extra, CallResult::Success, t1).map(|t| t.to),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn results_from_an_older_generation_are_ignored() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        let stale: Vec<Permit> = (0..5)
            .map(|_| b.try_acquire(t).0.expect("closed"))
            .collect();
        open_it(&mut b, t);
        for permit in &stale {
            assert_eq!(b.record(*permit, CallResult::Success, t), None);
        }
        let t1 = t + 100 * MS;
        let trial = b.try_acquire(t1).0.expect("trial");
        for permit in &stale {
            assert_eq!(b.record(*permit, CallResult::Failure, t1), None);
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.recorded_calls(), 0);
        assert_eq!(b.record(trial, CallResult::Success, t1), None);
    }

    #[test]
    fn an_operator_forces_open_disables_and_closes_with_a_fresh_window() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        let before = b.try_acquire(t).0.expect("closed admits");
        let forced = b.force(Override::ForcedOpen, t).map(|t| (t.from, t.to));
        assert_eq!(
            forced,
            Some((BreakerState::Closed, BreakerState::ForcedOpen))
        );
        assert_eq!(
            b.try_acquire(t + 1_000_000 * MS).0,
            None,
            "holds however long"
        );
        assert_eq!(b.tick(t + 1_000_000 * MS), None);
        assert_eq!(b.deadline(), None);
        assert_eq!(
            b.record(before, CallResult::Failure, t),
            None,
            "a stale result"
        );
        assert_eq!(b.force(Override::ForcedOpen, t), None, "already there");

        b.force(Override::Disabled, t);
        for _ in 0..50 {
            let permit = b.try_acquire(t).0.expect("disabled admits all");
            assert_eq!(
                b.record(permit, CallResult::Failure, t),
                None,
                "records nothing"
            );
        }
        assert_eq!(b.state(), BreakerState::Disabled);

        let closed = b.force(Override::Closed, t).map(|t| t.to);
        assert_eq!(closed, Some(BreakerState::Closed));
        assert_eq!(b.recorded_calls(), 0, "a fresh window");
        open_it(&mut b, t);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.force(Override::Closed, t).map(|t| t.to),
            Some(BreakerState::Closed)
        );
        // Closed already: no transition, but a fresh window all the same.
        for _ in 0..3 {
            call(&mut b, CallResult::Failure, t);
        }
        assert_eq!(b.recorded_calls(), 3);
        assert_eq!(b.force(Override::Closed, t), None, "no transition");
        assert_eq!(b.recorded_calls(), 0, "the three failures forgotten");
        assert_eq!(
            call(&mut b, CallResult::Failure, t),
            None,
            "one of one, too few"
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_half_open_breaker_decides_on_all_its_trials_however_slowly_they_come() {
        let t = Instant::now();
        let mut b = Breaker::new(config(), t);
        open_it(&mut b, t);
        let half_open = b.tick(t + 100 * MS).map(|t| t.to);
        assert_eq!(half_open, Some(BreakerState::HalfOpen));
        assert_eq!(b.deadline(), None, "no time limit in half-open");
        // One trial at a time, each long after the last (light traffic): each succeeds,
        // and the breaker waits for the rest instead of reopening.
        let mut now = t + 100 * MS;
        for n in 1..config().half_open_calls {
            now += 100_000 * MS;
            let trial = b.try_acquire(now).0.expect("trial");
            assert_eq!(b.record(trial, CallResult::Success, now), None, "trial {n}");
            assert_eq!(b.tick(now + 100_000 * MS), None, "after trial {n}");
            assert_eq!(b.state(), BreakerState::HalfOpen);
        }
        now += 100_000 * MS;
        let last = b.try_acquire(now).0.expect("the last trial");
        let closed = b.record(last, CallResult::Success, now).map(|t| t.to);
        assert_eq!(closed, Some(BreakerState::Closed));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Acquire,
        /// Finish the outstanding call at this index (mod the count) with a result.
        Finish(usize, u8),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Acquire),
            4 => (any::<usize>(), 0u8..3).prop_map(|(i, r)| Step::Finish(i, r)),
            1 => (0u64..150).prop_map(Step::Advance),
        ]
    }

    fn breaker_config() -> impl Strategy<Value = BreakerConfig> {
        (1u32..12, 0.0f64..=1.0, 1u32..6).prop_flat_map(|(window, threshold, trials)| {
            (1u32..=window).prop_map(move |minimum| BreakerConfig {
                window_size: window,
                minimum_calls: minimum,
                failure_rate_threshold: threshold,
                open: Duration::from_millis(100),
                half_open_calls: trials,
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Under any interleaving of calls, results and time, every transition has its
        /// cause, and half-open never decides before all its trials have finished.
        #[test]
        fn every_transition_has_its_cause(config in breaker_config(), steps in prop::collection::vec(step(), 1..200)) {
            let start = Instant::now();
            let mut now = start;
            let mut b = Breaker::new(config, start);
            let mut outstanding: Vec<Permit> = Vec::new();
            for step in steps {
                let before = b.clone();
                let transition = match step {
                    Step::Acquire => {
                        let (permit, transition) = b.try_acquire(now);
                        if let Some(permit) = permit {
                            outstanding.push(permit);
                        }
                        transition
                    }
                    Step::Finish(i, r) => {
                        if outstanding.is_empty() { continue; }
                        let permit = outstanding.remove(i % outstanding.len());
                        let result = [CallResult::Success, CallResult::Failure, CallResult::Neutral][r as usize];
                        let transition = b.record(permit, result, now);
                        if let Some(t) = transition {
                            let current = permit.generation == before.generation;
                            prop_assert!(current, "a stale result caused {t:?}");
                            prop_assert!(result != CallResult::Neutral, "a 429 caused {t:?}");
                            match (t.from, t.to) {
                                (BreakerState::Closed, BreakerState::Open) => {
                                    prop_assert!(before.window.len() as u32 + 1 >= config.minimum_calls);
                                }
                                (BreakerState::HalfOpen, _) => {
                                    prop_assert_eq!(before.trials_finished + 1, config.half_open_calls);
                                }
                                other => prop_assert!(false, "a result caused {other:?}"),
                            }
                        }
                        transition
                    }
                    Step::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        let transition = b.tick(now);
                        if let Some(t) = transition {
                            prop_assert_eq!(t.from, BreakerState::Open, "time moved only open");
                            prop_assert!(now >= before.since + config.open, "{t:?} before its time");
                            prop_assert!(t.from != BreakerState::Closed, "time closed nothing");
                        }
                        transition
                    }
                };
                if let Some(t) = transition {
                    prop_assert_ne!(t.from, t.to);
                    prop_assert_eq!(b.generation, before.generation + 1);
                } else {
                    prop_assert_eq!(b.state(), before.state(), "a state change with no transition");
                }
                // Never more trials out at once than the sample size.
                prop_assert!(b.trials_admitted <= config.half_open_calls);
                prop_assert!(b.trials_finished <= b.trials_admitted);
                prop_assert!(b.recorded_calls() <= config.window_size.max(config.half_open_calls));
                prop_assert!((0.0..=1.0).contains(&b.failure_rate()));
            }
        }
    }
}
