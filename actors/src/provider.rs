//! `ProviderActor`: one per configured provider, each on its own arbiter. It owns its
//! outcome stream (`Pcg64`), its queue of messages and its counters; nothing it holds is
//! shared with another provider.
//!
//! A message arrives as `Dispatch`, or with others in one `DispatchMany`. Each attempt
//! first asks the provider's breaker for a permit; while the breaker refuses, messages
//! wait in the queue, no outcome is drawn and nothing is failed. An admitted attempt draws
//! the next outcome when it starts, so the k-th attempt gets the k-th draw whatever the
//! timing; it then takes the simulated latency on a timer (many attempts are in flight at
//! once, none blocks a thread), reports its result to the breaker, is recorded through the
//! store's group commit, and is retried per `RetryPolicy` until it succeeds or runs out
//! of attempts.
//!
//! Supervision: a panic inside the actor is caught and stops it; its `Supervisor` restarts
//! it at once. A restart drops the context's timers, so every message the actor holds
//! outside its ready queue (in flight, or waiting for a retry or its due time) is kept in
//! `parked`, which survives the restart: what was in flight goes back to the front of the
//! queue, what was waiting waits again for the rest of its time. After a
//! restart the provider is as after a process start: breaker `closed`, outcome stream
//! seeded afresh; an attempt the panic interrupted is made again (at-least-once).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, Arbiter, AsyncContext, Context, Handler, Message,
    MessageResult, SpawnHandle, Supervised, Supervisor, WrapFuture,
};
use futures_util::FutureExt;
use slog::{error, info, o, warn, Logger};
use tokio::sync::oneshot;

use crate::admission::Backlog;
use crate::breaker::{
    Breaker, BreakerConfig, BreakerState, CallResult, Override, Permit, Transition,
};
use crate::domain::{Channel, MessageStatus, Timestamp};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, OutcomeOdds, OutcomeStream, RetryPolicy};
use crate::senders::{Answer, HttpSender};
use crate::store::{AttemptRecord, Store, StoreError, ToSend};

/// Attempts one provider keeps in flight at most; the rest wait in its queue. High enough
/// that 100 ms of latency does not cap throughput, low enough to bound timers in memory.
const MAX_IN_FLIGHT: usize = 8192;
/// Wait before writing an attempt record again after the database refused it.
const RECORD_RETRY: Duration = Duration::from_secs(1);
/// "provider refused our credentials" is logged at most this often.
const CREDENTIALS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Everything that defines one provider, resolved from the settings.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub channels: Vec<Channel>,
    pub seed: Option<u64>,
    pub odds: OutcomeOdds,
    /// Simulated time of a non-timeout attempt.
    pub latency: Duration,
    /// Simulated time of a timeout attempt.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// A real provider's HTTP sender; `None` for the simulator (seed, odds, latency).
    pub sender: Option<Arc<HttpSender>>,
    /// Requests in flight to this provider at most.
    pub max_in_flight: usize,
    /// The least time between two messages from one sender (0: none).
    pub sender_interval: Duration,
}

impl ProviderConfig {
    /// `simulated`, `twilio` or `sendgrid`.
    pub fn kind(&self) -> &'static str {
        self.sender.as_ref().map_or("simulated", |s| s.kind())
    }
}

/// Identifies a sender (`from`) for `sender_interval`, without holding its address.
pub fn sender_key(from: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    from.hash(&mut hasher);
    hasher.finish()
}

/// Hand a stored, queued message to its provider.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub message_id: i64,
    pub channel: Channel,
    /// Attempts already recorded for it (a recovered message continues its count).
    pub attempts_made: u32,
    /// When its next attempt is due; `None` means now.
    pub due: Option<Timestamp>,
    /// `sender_key` of its `from`.
    pub sender: u64,
    /// Attempts made before its latest retry; `max_attempts` counts from here.
    pub retry_base: u32,
}

/// Several `Dispatch`es in one mailbox item: an HTTP worker hands over what it accepted
/// in one turn of its loop with a single wake-up of this actor's thread.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DispatchMany(pub Vec<Dispatch>);

/// A provider as `/api/providers` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderStatus {
    pub name: String,
    /// `simulated`, `twilio` or `sendgrid`.
    pub kind: &'static str,
    pub channels: Vec<Channel>,
    pub seeded: bool,
    pub odds: OutcomeOdds,
    /// Messages this provider holds that are not finished.
    pub pending: u64,
    pub breaker_state: BreakerState,
    pub failure_rate: f64,
    pub recorded_calls: u32,
}

#[derive(Debug, Message)]
#[rtype(result = "ProviderStatus")]
pub struct GetProviderStatus;

/// An operator's breaker setting (CONTRACT section 11), `stamp` naming the stored setting
/// (when it was made). Each setting applies once on every instance, whatever was applied
/// before (a `closed` resets a breaker that tripped on its own): from the operator through
/// this instance, or from the database sync when its stamp is not the last one applied,
/// so a stored setting does not apply again at every lease renewal.
#[derive(Debug, Clone, Message)]
#[rtype(result = "ProviderStatus")]
pub struct ForceBreaker {
    pub to: Override,
    pub stamp: String,
}

/// The ids of the messages this provider holds (queued, waiting, in flight, or finished
/// but not yet recorded): the leases worth renewing.
#[derive(Debug, Message)]
#[rtype(result = "Vec<i64>")]
pub struct GetHeldIds;

/// Messages whose lease this instance no longer holds (a renewal found them taken over
/// by another instance): each one held here is dropped where it is next met, unsent.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LeasesLost(pub Vec<i64>);

/// At a graceful stop: start no attempt any more (and finish no simulated one), and
/// answer the messages whose request to a real provider is under way or whose record is
/// on its way. Once none is, this instance sends nothing more, and every lease it holds
/// may go to another instance.
#[derive(Debug, Message)]
#[rtype(result = "Vec<i64>")]
pub struct StopSending;

/// An attempt record landed, or was refused for good: the message is off this provider's
/// hands.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct RecordSettled {
    message_id: i64,
    /// Another instance holds the message now: stop working it.
    superseded: bool,
}

/// Starts one `ProviderActor` per configuration, each under a `Supervisor` on an arbiter
/// (thread) of its own, so that no provider's work can delay another's and a provider
/// that fails is restarted. Must run inside an actix system.
pub fn start_all(
    configs: Vec<ProviderConfig>,
    store: &Store,
    metrics: &Arc<Metrics>,
    backlog: &Arc<Backlog>,
    log: &Logger,
) -> BTreeMap<String, Addr<ProviderActor>> {
    configs
        .into_iter()
        .map(|config| {
            let name = config.name.clone();
            let (store, metrics, backlog, log) =
                (store.clone(), metrics.clone(), backlog.clone(), log.clone());
            let addr = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                ProviderActor::new(config, store, metrics, backlog, &log)
            });
            (name, addr)
        })
        .collect()
}

/// An attempt that has its answer: drawn and waited out (simulated), or from the
/// provider's API.
#[derive(Debug, Clone)]
struct Finished {
    job: Job,
    permit: Permit,
    attempt: u32,
    answer: Answer,
    took: Duration,
}

/// A simulated outcome as a real provider would have answered it.
fn simulated_answer(outcome: Outcome) -> Answer {
    Answer {
        outcome,
        error_code: outcome.error_code().map(str::to_owned),
        provider_message_id: None,
        retry_after: None,
        credentials_refused: false,
    }
}

#[derive(Debug, Clone, Copy)]
struct Job {
    message_id: i64,
    channel: Channel,
    attempts_made: u32,
    sender: u64,
    retry_base: u32,
}

/// A job held on a timer, and when it is due if it is waiting rather than in flight.
struct Parked {
    job: Job,
    due: Option<Instant>,
}

pub struct ProviderActor {
    config: ProviderConfig,
    outcomes: OutcomeStream,
    breaker: Breaker,
    /// The timer that applies the breaker's next time-driven transition.
    breaker_timer: Option<SpawnHandle>,
    ready: VecDeque<Job>,
    /// Messages held on a timer (in flight, or waiting to be retried or due), by token.
    parked: BTreeMap<u64, Parked>,
    /// Messages that were waiting when the actor restarted, and until when: `started`
    /// sets their timers again.
    waiting_after_restart: Vec<(Job, Instant)>,
    next_token: u64,
    in_flight: usize,
    /// Messages held (waiting, ready or in flight): this provider's share of the backlog.
    /// A second `Dispatch` of one of them (a sweep that met a lapsed lease) is ignored.
    held: HashSet<i64>,
    /// Finished here, their records not yet in the database: their leases still matter.
    /// Counted per message: a retry's record can be on its way while an earlier one is
    /// still retried, and the message stays leased until the last of them settles.
    unrecorded: HashMap<i64, Unrecorded>,
    /// Taken over by another instance while held here: dropped when next met.
    superseded: HashSet<i64>,
    /// Finished here while records of theirs were still on their way: each keeps its
    /// backlog slot until the last of them settles, so that the records waiting for the
    /// writer are bounded by the backlog too. (A provider that finishes messages faster
    /// than the database records them, such as a simulated one working through a bulk
    /// retry, would otherwise queue records without bound: 1.7 GB for 650,000.) Counted:
    /// a message let go, taken in again and let go again before its records settled
    /// holds two.
    slot_until_recorded: HashMap<i64, u32>,
    /// Per sender, the earliest time its next message may leave (`sender_interval`).
    sender_slots: HashMap<u64, Instant>,
    /// Per sender, in order, the messages waiting for its slot. They hold neither a
    /// breaker permit nor an in-flight place while they wait, so other senders' messages
    /// pass them and an operator's `forced_open` stops them.
    paced: HashMap<u64, VecDeque<Job>>,
    /// Senders whose slot has come: their first paced message goes before `ready`.
    due_senders: VecDeque<u64>,
    /// A graceful stop has begun: no attempt starts any more.
    stopping: bool,
    /// When "provider refused our credentials" was last logged.
    credentials_logged: Option<Instant>,
    /// The operator's last setting, kept across a restart, and its stamp.
    applied_override: Override,
    applied_stamp: Option<String>,
    store: Store,
    metrics: Arc<Metrics>,
    backlog: Arc<Backlog>,
    log: Logger,
}

/// A message's attempt records on their way to the database.
struct Unrecorded {
    records: u32,
    /// The highest attempt number among them.
    attempt: u32,
    /// Closed when the newest of them settles: the next record waits for it, so a record
    /// written again after a refusal still lands before its successors.
    newest: oneshot::Receiver<()>,
}

/// A record's place in its message's line: what to wait for, and what to close once
/// settled (dropping it closes it, a panic's unwinding too).
struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    settled: oneshot::Sender<()>,
}

impl Unrecorded {
    /// Counts one more record of the message, of `attempt`, on its way and gives it its
    /// turn.
    fn queue(unrecorded: &mut HashMap<i64, Unrecorded>, message_id: i64, attempt: u32) -> Turn {
        let (settled, newest) = oneshot::channel();
        let previous = match unrecorded.entry(message_id) {
            Entry::Occupied(mut on_its_way) => {
                let on_its_way = on_its_way.get_mut();
                on_its_way.records += 1;
                on_its_way.attempt = on_its_way.attempt.max(attempt);
                Some(std::mem::replace(&mut on_its_way.newest, newest))
            }
            Entry::Vacant(none) => {
                none.insert(Unrecorded {
                    records: 1,
                    attempt,
                    newest,
                });
                None
            }
        };
        Turn { previous, settled }
    }
}

impl ProviderActor {
    pub fn new(
        config: ProviderConfig,
        store: Store,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        log: &Logger,
    ) -> Self {
        ProviderActor {
            outcomes: OutcomeStream::new(config.seed, config.odds),
            breaker: Breaker::new(config.breaker, Instant::now()),
            breaker_timer: None,
            log: log.new(o!("provider" => config.name.clone())),
            config,
            ready: VecDeque::new(),
            parked: BTreeMap::new(),
            waiting_after_restart: Vec::new(),
            next_token: 0,
            in_flight: 0,
            held: HashSet::new(),
            unrecorded: HashMap::new(),
            superseded: HashSet::new(),
            slot_until_recorded: HashMap::new(),
            sender_slots: HashMap::new(),
            paced: HashMap::new(),
            due_senders: VecDeque::new(),
            stopping: false,
            credentials_logged: None,
            applied_override: Override::Closed,
            applied_stamp: None,
            store,
            metrics,
            backlog,
        }
    }

    fn set_pending_gauge(&self) {
        self.metrics
            .pending_messages
            .with_label_values(&[&self.config.name])
            .set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
    }

    /// Starts as many ready attempts as the in-flight bound and the breaker allow: first
    /// the paced messages whose sender's slot has come, then the ready queue, where a
    /// message whose sender must still wait joins that sender's paced line instead.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        // `max_in_flight` bounds requests to a real provider; the simulator's attempts are
        // timers, bounded only by MAX_IN_FLIGHT (100 ms of simulated latency must not cap
        // throughput at max_in_flight per 100 ms).
        let limit = match self.config.sender {
            Some(_) => MAX_IN_FLIGHT.min(self.config.max_in_flight.max(1)),
            None => MAX_IN_FLIGHT,
        };
        while self.in_flight < limit {
            let due_sender = self.due_senders.front().copied();
            if due_sender.is_none() && !self.pace_front_of_ready(ctx) {
                break;
            }
            let (permit, transition) = self.breaker.try_acquire(Instant::now());
            if let Some(transition) = transition {
                self.on_transition(transition, ctx);
            }
            let Some(permit) = permit else {
                self.metrics
                    .breaker_rejections
                    .with_label_values(&[&self.config.name])
                    .inc();
                break;
            };
            let job = match due_sender {
                Some(sender) => {
                    self.due_senders.pop_front();
                    self.next_of_sender(sender, ctx)
                }
                None => self.ready.pop_front(),
            };
            let Some(job) = job else {
                self.breaker
                    .record(permit, CallResult::Neutral, Instant::now());
                continue;
            };
            if self.superseded.remove(&job.message_id) {
                self.breaker
                    .record(permit, CallResult::Neutral, Instant::now());
                info!(self.log, "message left to the instance that holds its lease";
                    "message_id" => job.message_id);
                self.let_go(job.message_id);
                continue;
            }
            self.take_sender_slot(job.sender);
            self.start_attempt(job, permit, ctx);
        }
    }

    /// Moves the ready queue's first messages whose sender must wait into their sender's
    /// paced line (behind its earlier messages), until the first one that may leave now;
    /// answers whether there is one.
    fn pace_front_of_ready(&mut self, ctx: &mut Context<Self>) -> bool {
        let interval = self.pacing();
        while let Some(job) = self.ready.front().copied() {
            if interval.is_zero() {
                return true;
            }
            if let Some(line) = self.paced.get_mut(&job.sender) {
                line.push_back(job);
            } else {
                let now = Instant::now();
                match self.sender_slots.get(&job.sender) {
                    Some(slot) if *slot > now => {
                        let wait = *slot - now;
                        self.paced.insert(job.sender, VecDeque::from([job]));
                        self.call_sender_in(ctx, job.sender, wait);
                    }
                    _ => return true,
                }
            }
            self.ready.pop_front();
        }
        false
    }

    /// Takes the first paced message of `sender`, whose slot has come; if more wait, its
    /// next slot is called.
    fn next_of_sender(&mut self, sender: u64, ctx: &mut Context<Self>) -> Option<Job> {
        let Entry::Occupied(mut line) = self.paced.entry(sender) else {
            return None;
        };
        let job = line.get_mut().pop_front();
        if line.get().is_empty() {
            line.remove();
        } else {
            let interval = self.pacing();
            self.call_sender_in(ctx, sender, interval);
        }
        job
    }

    /// After `wait`, the first paced message of `sender` may leave.
    fn call_sender_in(&mut self, ctx: &mut Context<Self>, sender: u64, wait: Duration) {
        ctx.run_later(wait, move |provider, ctx| {
            provider.guarded(ctx, move |provider, ctx| {
                if provider.paced.contains_key(&sender) {
                    provider.due_senders.push_back(sender);
                }
                provider.pump(ctx);
            });
        });
    }

    /// Counts, shows and logs a breaker transition, and sets the timer for the next one.
    fn on_transition(&mut self, transition: Transition, ctx: &mut Context<Self>) {
        let name = self.config.name.as_str();
        let (from, to) = (transition.from.as_str(), transition.to.as_str());
        self.metrics
            .breaker_transitions
            .with_label_values(&[name, from, to])
            .inc();
        self.set_breaker_gauge();
        warn!(self.log, "breaker transition"; "from" => from, "to" => to);
        if let Some(timer) = self.breaker_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(deadline) = self.breaker.deadline() {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.breaker_timer = Some(ctx.run_later(wait, |provider, ctx| {
                provider.guarded(ctx, |provider, ctx| {
                    provider.breaker_timer = None;
                    if let Some(transition) = provider.breaker.tick(Instant::now()) {
                        provider.on_transition(transition, ctx);
                    }
                    provider.pump(ctx);
                });
            }));
        }
    }

    fn set_breaker_gauge(&self) {
        let current = self.breaker.state();
        for state in BreakerState::ALL {
            self.metrics
                .breaker_state
                .with_label_values(&[&self.config.name, state.as_str()])
                .set(i64::from(state == current));
        }
    }

    fn start_attempt(&mut self, job: Job, permit: Permit, ctx: &mut Context<Self>) {
        if let Some(sender) = self.config.sender.clone() {
            self.start_real_attempt(sender, job, permit, ctx);
            return;
        }
        let attempt = job.attempts_made + 1;
        let outcome = self.outcomes.draw();
        self.count_attempt(job.channel);
        self.in_flight += 1;
        let took = if outcome == Outcome::Timeout {
            self.config.timeout
        } else {
            self.config.latency
        };
        let finished = Finished {
            job,
            permit,
            attempt,
            answer: simulated_answer(outcome),
            took,
        };
        if took.is_zero() {
            // Parked while it runs, so that a panic half-way leaves it to be requeued.
            let token = self.park(job);
            self.finish_attempt(finished, ctx);
            self.parked.remove(&token);
        } else {
            self.hold(ctx, took, job, move |provider, _, ctx| {
                // A graceful stop abandons a simulated attempt (nothing was sent anywhere)
                // and hands its message to the next start, which makes it again.
                if !provider.stopping {
                    provider.finish_attempt(finished, ctx);
                }
            });
        }
    }

    fn count_attempt(&self, channel: Channel) {
        self.metrics
            .dispatch_attempts
            .with_label_values(&[&self.config.name, channel.as_str()])
            .inc();
    }

    /// One request to the provider's API, on this actor's context: the message is read
    /// (the API needs its content), sent, and its answer finishes the attempt like a
    /// simulated one. While it runs the job is parked, so a restart requeues it.
    fn start_real_attempt(
        &mut self,
        sender: Arc<HttpSender>,
        job: Job,
        permit: Permit,
        ctx: &mut Context<Self>,
    ) {
        let attempt = job.attempts_made + 1;
        let store = self.store.clone();
        let log = self.log.clone();
        let request = async move {
            let started = Instant::now();
            let answer = match store.message_to_send(job.message_id).await? {
                // Another instance's now, or sent, failed, or attempted this far already
                // (its record landed while a sweep handed it here again after a long
                // database outage): sending it would send it twice.
                ToSend::TakenOver => {
                    info!(log, "message left to the instance that holds its lease";
                        "message_id" => job.message_id);
                    return Ok(None);
                }
                ToSend::Read(message, attempts)
                    if message.status != MessageStatus::Queued.as_str()
                        || attempts.iter().any(|a| {
                            u32::try_from(a.attempt).map_or(true, |made| made >= attempt)
                        }) =>
                {
                    return Ok(None);
                }
                ToSend::Read(message, _) => sender.send(&message).await,
                ToSend::Gone => Answer {
                    outcome: Outcome::Rejected,
                    error_code: Some("not_found".into()),
                    provider_message_id: None,
                    retry_after: None,
                    credentials_refused: false,
                },
            };
            Ok::<_, StoreError>(Some((answer, started.elapsed())))
        };
        self.await_answer(job, permit, request, ctx);
    }

    /// Finishes the attempt with `request`'s answer once it comes. A panic while the
    /// request runs (in the HTTP client, in reading an answer) restarts the actor as a
    /// panic in a handler does: the job is still parked, so the restart requeues it.
    /// Without this, the panic would end the future unseen and the provider would hold
    /// its messages forever.
    fn await_answer(
        &mut self,
        job: Job,
        permit: Permit,
        request: impl Future<Output = Result<Option<(Answer, Duration)>, StoreError>> + 'static,
        ctx: &mut Context<Self>,
    ) {
        let attempt = job.attempts_made + 1;
        self.in_flight += 1;
        let token = self.park(job);
        let request = AssertUnwindSafe(request).catch_unwind();
        ctx.spawn(request.into_actor(self).map(move |result, provider, ctx| {
            let Ok(result) = result else {
                error!(provider.log, "provider actor panicked; restarting");
                ctx.stop();
                return;
            };
            provider.guarded(ctx, move |provider, ctx| {
                if provider.parked.remove(&token).is_none() {
                    // Restarted meanwhile: the job was requeued, this answer is stale.
                    return;
                }
                match result {
                    Ok(Some((answer, took))) => {
                        provider.count_attempt(job.channel);
                        let finished = Finished {
                            job,
                            permit,
                            attempt,
                            answer,
                            took,
                        };
                        provider.finish_attempt(finished, ctx);
                    }
                    // Nothing left to send: no request was made.
                    Ok(None) => {
                        provider.in_flight -= 1;
                        provider
                            .breaker
                            .record(permit, CallResult::Neutral, Instant::now());
                        provider.let_go(job.message_id);
                    }
                    // The message could not be read: no request was made, so no attempt
                    // is counted and the breaker hears nothing; the job tries again.
                    Err(e) => {
                        warn!(provider.log, "message not read for sending; will retry";
                            "message_id" => job.message_id, "error" => e.to_string());
                        provider.in_flight -= 1;
                        provider
                            .breaker
                            .record(permit, CallResult::Neutral, Instant::now());
                        provider.wait(ctx, RECORD_RETRY, job);
                    }
                }
                provider.pump(ctx);
            });
        }));
    }

    /// `sender_interval`, which only a real provider reads.
    fn pacing(&self) -> Duration {
        match self.config.sender {
            Some(_) => self.config.sender_interval,
            None => Duration::ZERO,
        }
    }

    /// Marks that `sender`'s message leaves now: its next waits `sender_interval`.
    fn take_sender_slot(&mut self, sender: u64) {
        let interval = self.pacing();
        if interval.is_zero() {
            return;
        }
        let now = Instant::now();
        if self.sender_slots.len() > 10_000 {
            self.sender_slots.retain(|_, next| *next > now);
        }
        self.sender_slots.insert(sender, now + interval);
    }

    /// Parks a job in flight: a restart makes it ready again at once.
    fn park(&mut self, job: Job) -> u64 {
        self.park_until(job, None)
    }

    fn park_until(&mut self, job: Job, due: Option<Instant>) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.parked.insert(token, Parked { job, due });
        token
    }

    /// Keeps `job`, in flight, in `parked` for `delay` (where a restart finds it), then
    /// runs `then`.
    fn hold(
        &mut self,
        ctx: &mut Context<Self>,
        delay: Duration,
        job: Job,
        then: impl FnOnce(&mut Self, Job, &mut Context<Self>) + 'static,
    ) {
        let token = self.park(job);
        self.run_parked(ctx, delay, token, then);
    }

    /// Keeps `job` waiting for `delay` (a retry's backoff, a scheduled send), then makes
    /// it ready. A restart keeps the wait: the job must not go before its time.
    fn wait(&mut self, ctx: &mut Context<Self>, delay: Duration, job: Job) {
        let token = self.park_until(job, Some(Instant::now() + delay));
        self.run_parked(ctx, delay, token, |provider, job, _| {
            provider.ready.push_back(job)
        });
    }

    fn run_parked(
        &mut self,
        ctx: &mut Context<Self>,
        delay: Duration,
        token: u64,
        then: impl FnOnce(&mut Self, Job, &mut Context<Self>) + 'static,
    ) {
        ctx.run_later(delay, move |provider, ctx| {
            provider.guarded(ctx, move |provider, ctx| {
                if let Some(parked) = provider.parked.remove(&token) {
                    then(provider, parked.job, ctx);
                }
                provider.pump(ctx);
            });
        });
    }

    /// Runs `f`; a panic in it stops the actor so that its supervisor restarts it.
    fn guarded(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut Self, &mut Context<Self>)) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(self, ctx))).is_err() {
            error!(self.log, "provider actor panicked; restarting");
            ctx.stop();
        }
    }

    fn finish_attempt(&mut self, finished: Finished, ctx: &mut Context<Self>) {
        let Finished {
            job,
            permit,
            attempt,
            answer,
            took,
        } = finished;
        let outcome = answer.outcome;
        self.in_flight -= 1;
        let result = match outcome {
            Outcome::Success => CallResult::Success,
            Outcome::RateLimited | Outcome::Rejected => CallResult::Neutral,
            Outcome::Error | Outcome::Timeout => CallResult::Failure,
        };
        if answer.credentials_refused
            && self
                .credentials_logged
                .is_none_or(|at| at.elapsed() >= CREDENTIALS_LOG_EVERY)
        {
            self.credentials_logged = Some(Instant::now());
            error!(self.log, "provider refused our credentials";
                "error_code" => answer.error_code.as_deref().unwrap_or_default());
        }
        if let Some(transition) = self.breaker.record(permit, result, Instant::now()) {
            self.on_transition(transition, ctx);
        }
        let (name, channel) = (self.config.name.as_str(), job.channel.as_str());
        let latency_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.metrics
            .dispatch_outcomes
            .with_label_values(&[name, channel, outcome.as_str()])
            .inc();
        self.metrics
            .dispatch_duration
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
        info!(self.log, "dispatch attempt";
            "channel" => channel, "message_id" => job.message_id, "attempt" => attempt,
            "outcome" => outcome.as_str(), "latency_ms" => latency_ms,
            "breaker" => self.breaker.state().as_str());

        // A retried message has max_attempts of its own, counted from its retry.
        let round_attempt = attempt.saturating_sub(job.retry_base);
        let retry = self
            .config
            .retry
            .next_delay(round_attempt, outcome)
            .map(|delay| {
                match (outcome, answer.retry_after) {
                    // The provider said how long; it knows its limit better than our default.
                    (Outcome::RateLimited, Some(asked)) => asked,
                    _ => delay,
                }
            });
        let (status, next_attempt_at) = match (outcome, retry) {
            (Outcome::Success, _) => (MessageStatus::Sent, None),
            (_, Some(delay)) => (
                MessageStatus::Queued,
                Some((delay, Timestamp::after(delay))),
            ),
            (_, None) => (MessageStatus::Failed, None),
        };
        let turn = Unrecorded::queue(&mut self.unrecorded, job.message_id, attempt);
        self.record(
            ctx.address(),
            turn,
            AttemptRecord {
                message_id: job.message_id,
                provider: self.config.name.clone(),
                attempt,
                outcome: outcome.as_str(),
                latency_ms,
                error_code: answer.error_code,
                provider_message_id: answer.provider_message_id,
                status,
                next_attempt_at: next_attempt_at.map(|(_, at)| at),
            },
        );
        match (status, next_attempt_at) {
            (MessageStatus::Queued, Some((delay, _))) => {
                let next = Job {
                    attempts_made: attempt,
                    ..job
                };
                self.wait(ctx, delay, next);
            }
            _ => {
                if status == MessageStatus::Failed {
                    warn!(self.log, "message failed";
                        "channel" => channel, "message_id" => job.message_id,
                        "attempts" => attempt, "last_outcome" => outcome.as_str());
                    self.metrics
                        .messages_failed
                        .with_label_values(&[name, channel])
                        .inc();
                }
                self.let_go(job.message_id);
            }
        }
    }

    /// The message is finished here (or another instance has it): its backlog slot goes
    /// back, once its records are in the database.
    fn let_go(&mut self, message_id: i64) {
        if self.held.remove(&message_id) {
            if self.unrecorded.contains_key(&message_id) {
                *self.slot_until_recorded.entry(message_id).or_default() += 1;
            } else {
                self.backlog.release();
            }
        }
        self.superseded.remove(&message_id);
        self.set_pending_gauge();
    }

    /// Writes the record through group commit, again and again while the database refuses
    /// it: the message stays queued in the database until its record lands, so a restart
    /// in the meantime dispatches it again rather than losing it. A message's records are
    /// written one after another in attempt order: one still being written again holds
    /// back the next, which would otherwise land first and leave the attempts list
    /// without it until then.
    fn record(&self, me: Addr<ProviderActor>, turn: Turn, record: AttemptRecord) {
        let (store, log) = (self.store.clone(), self.log.clone());
        let message_id = record.message_id;
        Self::spawn_record(me, turn, message_id, async move {
            loop {
                // Whether this instance's record is stored (`false`: another instance
                // took the message over, its lease lapsed here).
                let ours = match store.record_attempt(record.clone()).await {
                    Ok(()) => Ok(true),
                    // The attempt is recorded already: by this record's own earlier copy
                    // (it committed, but its answer was lost with the connection), or by
                    // another instance.
                    Err(StoreError::Conflict(_)) => {
                        store.recorded_here(message_id, record.attempt).await
                    }
                    Err(StoreError::Superseded) => Ok(false),
                    Err(e) => Err(e),
                };
                match ours {
                    Ok(true) => return false,
                    Ok(false) => {
                        warn!(log, "attempt superseded by another instance";
                            "message_id" => message_id, "attempt" => record.attempt);
                        return true;
                    }
                    Err(e) => {
                        warn!(log, "attempt not recorded; will retry";
                            "message_id" => message_id, "attempt" => record.attempt,
                            "error" => e.to_string());
                        tokio::time::sleep(RECORD_RETRY).await;
                    }
                }
            }
        });
    }

    /// Runs `write` (true when the message was superseded) once the message's previous
    /// record has settled. However the task ends, the actor hears that this record
    /// settled: a task that panicked would otherwise leave its message counted, its lease
    /// renewed, until a restart.
    fn spawn_record(
        me: Addr<ProviderActor>,
        turn: Turn,
        message_id: i64,
        write: impl Future<Output = bool> + 'static,
    ) {
        let Turn { previous, settled } = turn;
        let settle = Settle {
            me,
            message_id,
            superseded: false,
            _settled: settled,
        };
        actix::spawn(async move {
            // Moved in whole: the task, not this function, must own the guard.
            let mut settle = settle;
            if let Some(previous) = previous {
                // Closed whether the earlier record landed or was refused for good.
                let _ = previous.await;
            }
            settle.superseded = write.await;
        });
    }
}

/// Owned by a record's task; dropping it, however the task ends (a panic's unwinding
/// too), closes the record's turn and tells the actor the record settled.
struct Settle {
    me: Addr<ProviderActor>,
    message_id: i64,
    superseded: bool,
    _settled: oneshot::Sender<()>,
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.me.do_send(RecordSettled {
            message_id: self.message_id,
            superseded: self.superseded,
        });
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;

    /// Runs at the first start and after every restart.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.set_pending_gauge();
        self.set_breaker_gauge();
        let now = Instant::now();
        for (job, due) in std::mem::take(&mut self.waiting_after_restart) {
            self.wait(ctx, due.saturating_duration_since(now), job);
        }
        self.pump(ctx);
    }
}

impl Supervised for ProviderActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        let now = Instant::now();
        let (waiting, in_flight): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_values()
            .partition(|parked| parked.due.is_some_and(|due| due > now));
        warn!(self.log, "provider restarted";
            "requeued" => in_flight.len(), "still_waiting" => waiting.len());
        let before = self.breaker.state();
        self.breaker = Breaker::new(self.config.breaker, Instant::now());
        // An operator's forced state outlives a restart; the breaker's own does not.
        if self.applied_override != Override::Closed {
            self.breaker.force(self.applied_override, Instant::now());
        }
        // A breaker the restart closed has made a transition like any other (CONTRACT
        // 4.4: every one is counted and logged once); `started` sets the gauge.
        let after = self.breaker.state();
        if after != before {
            let (from, to) = (before.as_str(), after.as_str());
            self.metrics
                .breaker_transitions
                .with_label_values(&[self.config.name.as_str(), from, to])
                .inc();
            warn!(self.log, "breaker transition"; "from" => from, "to" => to);
        }
        self.breaker_timer = None;
        self.outcomes = OutcomeStream::new(self.config.seed, self.config.odds);
        self.in_flight = 0;
        // Their calls were dropped with the context's timers: the next `pump` paces them
        // again (each sender's slot is kept), in their order, ahead of what was ready.
        self.due_senders.clear();
        for (_, line) in std::mem::take(&mut self.paced) {
            for job in line.into_iter().rev() {
                self.ready.push_front(job);
            }
        }
        // Oldest first, ahead of what was already ready.
        for parked in in_flight.into_iter().rev() {
            self.ready.push_front(parked.job);
        }
        // Their timers were dropped with the context's: `started` sets them again.
        self.waiting_after_restart = waiting
            .into_iter()
            .filter_map(|parked| Some((parked.job, parked.due?)))
            .collect();
    }
}

impl ProviderActor {
    /// A message held here, claimed back after another instance held it: that instance
    /// may have made attempts meanwhile, and the claim's count of them is the one to go
    /// on (a real provider would otherwise find its next attempt already made and drop
    /// the message until its lease lapsed). The held copy keeps its place and its time.
    fn catch_up(&mut self, claimed: &Dispatch) {
        let waiting = self
            .parked
            .values_mut()
            .filter(|parked| parked.due.is_some())
            .map(|parked| &mut parked.job);
        let queued = self
            .ready
            .iter_mut()
            .chain(self.paced.values_mut().flatten());
        for job in waiting.chain(queued) {
            if job.message_id == claimed.message_id && job.attempts_made < claimed.attempts_made {
                job.attempts_made = claimed.attempts_made;
                job.retry_base = claimed.retry_base;
            }
        }
    }

    /// Takes one message in: held for its due time, or ready for the next `pump`
    /// (answers whether it is ready).
    fn take_in(&mut self, msg: Dispatch, ctx: &mut Context<Self>) -> bool {
        // A message read before its record on its way here landed is not taken again
        // either: after a database outage longer than a lease, the sweep may hand back a
        // message whose final record has yet to land. One read after it (a retry of a
        // message whose `failed` record landed a moment ago) has made that many attempts.
        let stale = self
            .unrecorded
            .get(&msg.message_id)
            .is_some_and(|on_its_way| msg.attempts_made < on_its_way.attempt);
        if stale || !self.held.insert(msg.message_id) {
            // Already here: the slot the router took for this copy goes back. A claim of a
            // message held here (not one stale as above) has just leased it to this
            // instance: a takeover an earlier renewal found (by an instance that has
            // since stopped and handed it back) no longer stands, or the message would be
            // dropped at its turn, unsent until this lease lapsed too.
            if !stale && self.superseded.remove(&msg.message_id) {
                self.catch_up(&msg);
            }
            self.backlog.release();
            return false;
        }
        self.superseded.remove(&msg.message_id);
        let job = Job {
            message_id: msg.message_id,
            channel: msg.channel,
            attempts_made: msg.attempts_made,
            sender: msg.sender,
            retry_base: msg.retry_base,
        };
        match msg.due.map(Timestamp::until).filter(|wait| !wait.is_zero()) {
            Some(wait) => {
                self.wait(ctx, wait, job);
                false
            }
            None => {
                self.ready.push_back(job);
                true
            }
        }
    }
}

impl Handler<Dispatch> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Self::Context) {
        <Self as Handler<DispatchMany>>::handle(self, DispatchMany(vec![msg]), ctx);
    }
}

impl Handler<DispatchMany> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: DispatchMany, ctx: &mut Self::Context) {
        self.guarded(ctx, |provider, ctx| {
            let mut ready = false;
            for dispatch in msg.0 {
                ready |= provider.take_in(dispatch, ctx);
            }
            provider.set_pending_gauge();
            if ready {
                provider.pump(ctx);
            }
        });
    }
}

impl Handler<ForceBreaker> for ProviderActor {
    type Result = MessageResult<ForceBreaker>;

    fn handle(&mut self, msg: ForceBreaker, ctx: &mut Self::Context) -> Self::Result {
        if self.applied_stamp.as_deref() != Some(msg.stamp.as_str()) {
            self.applied_override = msg.to;
            self.applied_stamp = Some(msg.stamp);
            if let Some(transition) = self.breaker.force(msg.to, Instant::now()) {
                self.on_transition(transition, ctx);
            }
            self.pump(ctx);
        }
        MessageResult(self.status())
    }
}

impl Handler<LeasesLost> for ProviderActor {
    type Result = ();

    fn handle(&mut self, LeasesLost(ids): LeasesLost, _: &mut Self::Context) {
        for id in ids {
            if self.held.contains(&id) {
                self.superseded.insert(id);
            }
        }
    }
}

impl Handler<StopSending> for ProviderActor {
    type Result = MessageResult<StopSending>;

    fn handle(&mut self, _: StopSending, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        // A real provider's request may have reached it: waited for. A simulated attempt
        // is a timer, abandoned at the stop.
        let real = self.config.sender.is_some();
        let in_flight = self
            .parked
            .values()
            .filter(|parked| real && parked.due.is_none())
            .map(|parked| parked.job.message_id);
        let mut busy: Vec<i64> = in_flight.chain(self.unrecorded.keys().copied()).collect();
        busy.sort_unstable();
        busy.dedup();
        MessageResult(busy)
    }
}

impl Handler<GetHeldIds> for ProviderActor {
    type Result = MessageResult<GetHeldIds>;

    fn handle(&mut self, _: GetHeldIds, _: &mut Self::Context) -> Self::Result {
        let unrecorded = self.unrecorded.keys().filter(|id| !self.held.contains(id));
        MessageResult(self.held.iter().chain(unrecorded).copied().collect())
    }
}

impl Handler<RecordSettled> for ProviderActor {
    type Result = ();

    fn handle(&mut self, settled: RecordSettled, _: &mut Self::Context) {
        if let Entry::Occupied(mut on_its_way) = self.unrecorded.entry(settled.message_id) {
            on_its_way.get_mut().records -= 1;
            if on_its_way.get().records == 0 {
                on_its_way.remove();
                for _ in 0..self
                    .slot_until_recorded
                    .remove(&settled.message_id)
                    .unwrap_or(0)
                {
                    self.backlog.release();
                }
            }
        }
        if settled.superseded && self.held.contains(&settled.message_id) {
            // Waiting for a retry or in flight: dropped where it is next met.
            self.superseded.insert(settled.message_id);
        }
    }
}

/// How many attempt records are on their way to the database (tests follow them).
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "u32")]
struct CountUnrecorded;

#[cfg(test)]
impl Handler<CountUnrecorded> for ProviderActor {
    type Result = u32;

    fn handle(&mut self, _: CountUnrecorded, _: &mut Self::Context) -> u32 {
        self.unrecorded
            .values()
            .map(|on_its_way| on_its_way.records)
            .sum()
    }
}

impl Handler<GetProviderStatus> for ProviderActor {
    type Result = MessageResult<GetProviderStatus>;

    fn handle(&mut self, _: GetProviderStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl ProviderActor {
    fn status(&self) -> ProviderStatus {
        // A real kind draws no outcomes (CONTRACT 8: it ignores the seed and the odds), so
        // it shows none, not the simulator's it inherited from the defaults.
        let simulated = self.config.sender.is_none();
        let none = OutcomeOdds {
            timeout_pct: 0.0,
            error_pct: 0.0,
            ratelimit_pct: 0.0,
        };
        ProviderStatus {
            name: self.config.name.clone(),
            kind: self.config.kind(),
            channels: self.config.channels.clone(),
            seeded: simulated && self.outcomes.seeded(),
            odds: if simulated {
                self.outcomes.odds()
            } else {
                none
            },
            pending: self.held.len() as u64,
            breaker_state: self.breaker.state(),
            failure_rate: self.breaker.failure_rate(),
            recorded_calls: self.breaker.recorded_calls(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::outcome::OutcomeOdds;
    use crate::store::{self, OutboundStored};

    /// Stands for a bug: a panic inside a guarded handler.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Explode;

    impl Handler<Explode> for ProviderActor {
        type Result = ();

        fn handle(&mut self, _: Explode, ctx: &mut Self::Context) {
            self.guarded(ctx, |_, _| panic!("injected fault"));
        }
    }

    /// Stands for a bug in a record's task: the first of two records of a message panics
    /// instead of writing; the second lands.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct RecordPanics(i64);

    impl Handler<RecordPanics> for ProviderActor {
        type Result = ();

        fn handle(&mut self, RecordPanics(id): RecordPanics, ctx: &mut Self::Context) {
            let first = Unrecorded::queue(&mut self.unrecorded, id, 1);
            Self::spawn_record(ctx.address(), first, id, async {
                panic!("injected fault in a record's task")
            });
            let second = Unrecorded::queue(&mut self.unrecorded, id, 2);
            Self::spawn_record(ctx.address(), second, id, async { false });
        }
    }

    /// Stands for a bug in a request's future (the HTTP client's, an answer's reading):
    /// the message's attempt starts as a real one would, and its request panics.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct RequestPanics(i64);

    impl Handler<RequestPanics> for ProviderActor {
        type Result = ();

        fn handle(&mut self, RequestPanics(id): RequestPanics, ctx: &mut Self::Context) {
            self.held.insert(id);
            let job = Job {
                message_id: id,
                channel: Channel::Sms,
                attempts_made: 0,
                sender: 0,
                retry_base: 0,
            };
            let (permit, _) = self.breaker.try_acquire(Instant::now());
            let permit = permit.expect("a closed breaker admits");
            self.await_answer(
                job,
                permit,
                async { panic!("injected fault in a request") },
                ctx,
            );
        }
    }

    /// The attempts made, as this provider counts them, of each copy of a message it
    /// holds waiting or queued.
    #[derive(Message)]
    #[rtype(result = "Vec<u32>")]
    struct HeldAttempts(i64);

    impl Handler<HeldAttempts> for ProviderActor {
        type Result = Vec<u32>;

        fn handle(&mut self, HeldAttempts(id): HeldAttempts, _: &mut Self::Context) -> Vec<u32> {
            let parked = self.parked.values().map(|parked| parked.job);
            let queued = self
                .ready
                .iter()
                .chain(self.paced.values().flatten())
                .copied();
            parked
                .chain(queued)
                .filter(|job| job.message_id == id)
                .map(|job| job.attempts_made)
                .collect()
        }
    }

    /// Trips the breaker as failed calls would, through the same transition path.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct TripBreaker;

    impl Handler<TripBreaker> for ProviderActor {
        type Result = ();

        fn handle(&mut self, _: TripBreaker, ctx: &mut Self::Context) {
            while self.breaker.state() == BreakerState::Closed {
                let (permit, _) = self.breaker.try_acquire(Instant::now());
                let permit = permit.expect("a closed breaker admits");
                if let Some(transition) =
                    self.breaker
                        .record(permit, CallResult::Failure, Instant::now())
                {
                    self.on_transition(transition, ctx);
                }
            }
        }
    }

    /// Stops the actor as its panic guard does, so that its supervisor restarts it.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;

    impl Handler<Crash> for ProviderActor {
        type Result = ();

        fn handle(&mut self, _: Crash, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    /// Stands for a record written again after its first copy committed unseen: the
    /// message is held, and its attempt 1 record is written once more.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct RecordAgain(AttemptRecord);

    impl Handler<RecordAgain> for ProviderActor {
        type Result = ();

        fn handle(&mut self, RecordAgain(record): RecordAgain, ctx: &mut Self::Context) {
            self.held.insert(record.message_id);
            let turn = Unrecorded::queue(&mut self.unrecorded, record.message_id, 1);
            self.record(ctx.address(), turn, record);
        }
    }

    /// Whether the provider counts a message as taken over by another instance.
    #[derive(Message)]
    #[rtype(result = "bool")]
    struct IsSuperseded(i64);

    impl Handler<IsSuperseded> for ProviderActor {
        type Result = bool;

        fn handle(&mut self, IsSuperseded(id): IsSuperseded, _: &mut Self::Context) -> bool {
            self.superseded.contains(&id)
        }
    }

    fn config() -> ProviderConfig {
        ProviderConfig {
            name: "sms-mms".into(),
            channels: vec![Channel::Sms],
            seed: Some(1),
            odds: OutcomeOdds {
                timeout_pct: 0.0,
                error_pct: 0.0,
                ratelimit_pct: 0.0,
            },
            latency: Duration::from_millis(300),
            timeout: Duration::ZERO,
            retry: RetryPolicy {
                max_attempts: 3,
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(1),
                retry_after: Duration::from_millis(1),
            },
            breaker: BreakerConfig {
                window_size: 20,
                minimum_calls: 10,
                failure_rate_threshold: 0.5,
                open: Duration::from_secs(30),
                half_open_calls: 5,
            },
            sender: None,
            max_in_flight: 8192,
            sender_interval: Duration::ZERO,
        }
    }

    async fn poll_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let started = Instant::now();
        while !check().await {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A store on a new SQLite file in a temporary directory (kept alive by the caller),
    /// and the file's `sqlite://` address.
    fn sqlite_store() -> (tempfile::TempDir, String, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let timeout = Duration::from_secs(5);
        let store = Store::start(
            store::open(&url, 2, 1, timeout).expect("open"),
            2,
            Duration::from_secs(30),
            timeout,
        );
        (dir, url, store)
    }

    fn sms_metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&[("sms-mms".to_owned(), vec![Channel::Sms])]).expect("metrics"))
    }

    /// Stores new outbound message `n`; its id.
    async fn store_one(store: &Store, n: u32) -> i64 {
        let stored = store
            .insert_outbound(store::tests::new_message(n))
            .await
            .expect("stored");
        let OutboundStored::Created { id, .. } = stored else {
            panic!("not created: {stored:?}");
        };
        id
    }

    /// Message `id`'s first dispatch, as the router sends it.
    fn first_dispatch(id: i64) -> Dispatch {
        Dispatch {
            message_id: id,
            channel: Channel::Sms,
            attempts_made: 0,
            due: None,
            sender: 0,
            retry_base: 0,
        }
    }

    /// Attempt 1 of message `id`, a success that makes it `sent`.
    fn sent_record(id: i64) -> AttemptRecord {
        AttemptRecord {
            message_id: id,
            provider: "sms-mms".into(),
            attempt: 1,
            outcome: Outcome::Success.as_str(),
            latency_ms: 1,
            error_code: None,
            provider_message_id: None,
            status: MessageStatus::Sent,
            next_attempt_at: None,
        }
    }

    /// A provider of `config` under a `Supervisor`, so that a panic restarts it.
    fn supervised(
        config: ProviderConfig,
        store: &Store,
        metrics: &Arc<Metrics>,
        backlog: &Arc<Backlog>,
    ) -> Addr<ProviderActor> {
        let (store, metrics, backlog) = (store.clone(), metrics.clone(), backlog.clone());
        let log = Logger::root(slog::Discard, o!());
        actix::Supervisor::start(move |_| {
            ProviderActor::new(
                config.clone(),
                store.clone(),
                metrics.clone(),
                backlog.clone(),
                &log,
            )
        })
    }

    /// Stores new outbound message `n` and hands it to the provider, as the router does.
    async fn store_and_dispatch(
        store: &Store,
        backlog: &Backlog,
        addr: &Addr<ProviderActor>,
        n: u32,
    ) -> i64 {
        let id = store_one(store, n).await;
        backlog.add(1);
        addr.do_send(first_dispatch(id));
        id
    }

    #[actix::test]
    async fn a_panicking_provider_is_restarted_and_retries_what_it_held() {
        let (_dir, _, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(100));
        // Attempts long enough that none of the five ends before the fault, however slow
        // the machine (300 ms was outrun once in CI: 8 attempts, not 10).
        let slow = ProviderConfig {
            latency: Duration::from_secs(2),
            ..config()
        };
        let addr = supervised(slow, &store, &metrics, &backlog);

        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(store_and_dispatch(&store, &backlog, &addr, n).await);
        }
        let attempts = || {
            metrics
                .dispatch_attempts
                .with_label_values(&["sms-mms", "sms"])
                .get()
        };
        poll_until("five attempts in flight", async || attempts() == 5).await;

        addr.send(Explode).await.expect("the actor answers");

        for id in ids {
            poll_until("the message to be sent", async || {
                let found = store.get_message(id).await.expect("read");
                found.is_some_and(|(m, _)| m.status == "sent")
            })
            .await;
            let (_, recorded) = store.get_message(id).await.expect("read").expect("found");
            assert_eq!(
                recorded.len(),
                1,
                "the interrupted attempt was never recorded"
            );
            assert_eq!(recorded[0].attempt, 1);
        }
        assert_eq!(attempts(), 10, "five interrupted, five made again");
        // Each slot comes back once the actor hears its record landed, a moment after
        // the record is readable.
        poll_until("the backlog slots to come back", async || {
            backlog.pending() == 0
        })
        .await;
        let status = addr
            .send(GetProviderStatus)
            .await
            .expect("the actor answers");
        assert_eq!(status.pending, 0);
        assert_eq!(backlog.pending(), 0);
    }

    /// A restart makes what was in flight ready again, but what was waiting for its time
    /// (a scheduled send here, a retry's backoff alike) still waits for it.
    #[actix::test]
    async fn a_restart_keeps_a_scheduled_message_waiting() {
        let (_dir, _, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(100));
        let addr = supervised(config(), &store, &metrics, &backlog);
        let id = store_one(&store, 0).await;
        backlog.add(1);
        addr.do_send(Dispatch {
            due: Some(Timestamp::after(Duration::from_secs(3))),
            ..first_dispatch(id)
        });
        addr.send(Explode).await.expect("the actor answers");

        // Answered by the restarted actor, after its `started` pumped what was ready.
        let status = addr
            .send(GetProviderStatus)
            .await
            .expect("the actor answers");
        let attempts = metrics
            .dispatch_attempts
            .with_label_values(&["sms-mms", "sms"])
            .get();
        assert_eq!((status.pending, attempts), (1, 0), "sent before its time");
        let held = addr.send(GetHeldIds).await.expect("the actor answers");
        assert_eq!(held, vec![id], "no longer held for its time");
        // Its timer was set again: it goes when due.
        poll_until("the message to be sent when due", async || {
            let found = store.get_message(id).await.expect("read");
            found.is_some_and(|(m, _)| m.status == "sent")
        })
        .await;
    }

    /// An attempt record's writer waits for its answer, however long the database takes
    /// (here three times `database.timeout_ms`, behind another connection's lock): a copy
    /// left behind by a timeout would land first and make the next copy a conflict, read
    /// as another instance's record.
    #[actix::test]
    async fn an_attempt_record_waits_for_its_answer_past_the_timeout() {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        let url = format!("sqlite://{}", path.display());
        let timeout = Duration::from_millis(200);
        let store = Store::start(
            store::open(&url, 2, 1, timeout).expect("open"),
            2,
            Duration::from_secs(30),
            timeout,
        );
        let id = store_one(&store, 0).await;
        let mut lock = diesel::SqliteConnection::establish(&path.display().to_string())
            .expect("a second connection");
        lock.batch_execute("BEGIN IMMEDIATE")
            .expect("the write lock");
        let unlock = std::thread::spawn(move || {
            // The fault: the lock is held three timeouts long, then let go.
            std::thread::sleep(Duration::from_millis(600));
            lock.batch_execute("COMMIT").expect("let go");
        });
        let recorded = store.record_attempt(sent_record(id)).await;
        unlock.join().expect("the lock's thread");
        assert_eq!(recorded, Ok(()));
        let (message, attempts) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!((message.status.as_str(), attempts.len()), ("sent", 1));
    }

    /// A message finished here keeps its backlog slot until its record is in the
    /// database: claims fill the backlog's free slots, so a provider that finishes
    /// messages faster than they are recorded would otherwise queue records without
    /// bound.
    #[actix::test]
    async fn a_finished_message_keeps_its_backlog_slot_until_its_record_lands() {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;

        let (_dir, url, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(10));
        let addr = supervised(config(), &store, &metrics, &backlog);
        let id = store_one(&store, 0).await;
        let path = url.trim_start_matches("sqlite://").to_owned();
        let (let_go, until) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let lock = std::thread::spawn(move || {
            let mut lock = diesel::SqliteConnection::establish(&path).expect("a second connection");
            lock.batch_execute("BEGIN IMMEDIATE")
                .expect("the write lock");
            locked.send(()).expect("the test waits");
            let _ = until.recv();
            lock.batch_execute("COMMIT").expect("let go");
        });
        is_locked.recv().expect("locked");

        backlog.add(1);
        addr.do_send(first_dispatch(id));
        poll_until("the attempt made and its record on its way", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") == 1
                && addr.send(GetProviderStatus).await.expect("answers").pending == 0
        })
        .await;
        assert_eq!(backlog.pending(), 1, "held while its record waits");

        let_go.send(()).expect("the lock's thread waits");
        lock.join().expect("the lock's thread");
        poll_until("the record to land and the slot to come back", async || {
            backlog.pending() == 0
        })
        .await;
        let (message, _) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!(message.status, "sent");
    }

    /// A record whose first copy committed but whose answer was lost (the connection
    /// dropped after `COMMIT`) is written again and meets that copy: that is this
    /// instance's own record, not another instance's, so the message is not given up.
    #[actix::test]
    async fn a_record_meeting_its_own_earlier_copy_is_not_superseded() {
        let (_dir, _, store) = sqlite_store();
        let log = Logger::root(slog::Discard, o!());
        let addr = ProviderActor::new(
            config(),
            store.clone(),
            sms_metrics(),
            Arc::new(Backlog::new(10)),
            &log,
        )
        .start();
        let id = store_one(&store, 0).await;
        let record = AttemptRecord {
            outcome: Outcome::Error.as_str(),
            error_code: Some("500".into()),
            status: MessageStatus::Queued,
            next_attempt_at: Some(Timestamp::after(Duration::from_secs(60))),
            ..sent_record(id)
        };
        store
            .record_attempt(record.clone())
            .await
            .expect("the first copy");
        addr.send(RecordAgain(record))
            .await
            .expect("the actor answers");
        poll_until("the second copy to settle", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") == 0
        })
        .await;
        assert!(!addr
            .send(IsSuperseded(id))
            .await
            .expect("the actor answers"));
    }

    /// A restart gives the provider a fresh, closed breaker: from an open one, that is a
    /// transition, counted as every other one is.
    #[actix::test]
    async fn a_restart_that_closes_an_open_breaker_counts_the_transition() {
        let (_dir, _, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(10));
        let addr = supervised(config(), &store, &metrics, &backlog);
        let count = |from: &str, to: &str| {
            metrics
                .breaker_transitions
                .with_label_values(&["sms-mms", from, to])
                .get()
        };
        addr.send(TripBreaker).await.expect("the actor answers");
        assert_eq!(count("closed", "open"), 1);
        addr.send(Crash).await.expect("the actor answers");
        poll_until("the restarted provider's breaker closed", async || {
            addr.send(GetProviderStatus)
                .await
                .is_ok_and(|status| status.breaker_state == BreakerState::Closed)
        })
        .await;
        assert_eq!(count("open", "closed"), 1, "the restart's transition");
    }

    /// A renewal found the message taken over while it waited here; the other instance
    /// then stopped and handed it back, and this one's sweep claimed it again. That claim
    /// makes the lease this instance's: the message is no longer counted as taken over.
    #[actix::test]
    async fn a_message_claimed_back_is_no_longer_counted_as_taken_over() {
        let (_dir, _, store) = sqlite_store();
        let log = Logger::root(slog::Discard, o!());
        let backlog = Arc::new(Backlog::new(10));
        let addr = ProviderActor::new(
            config(),
            store.clone(),
            sms_metrics(),
            backlog.clone(),
            &log,
        )
        .start();
        let id = store_one(&store, 0).await;
        let later = Dispatch {
            due: Some(Timestamp::after(Duration::from_secs(60))),
            ..first_dispatch(id)
        };
        backlog.add(1);
        addr.send(later.clone()).await.expect("the actor answers");
        addr.send(LeasesLost(vec![id]))
            .await
            .expect("the actor answers");
        assert!(addr.send(IsSuperseded(id)).await.expect("answers"));

        // The other instance made two attempts meanwhile.
        backlog.add(1);
        addr.send(Dispatch {
            attempts_made: 2,
            ..later
        })
        .await
        .expect("the actor answers");
        assert!(!addr.send(IsSuperseded(id)).await.expect("answers"));
        assert_eq!(backlog.pending(), 1, "the second copy's slot went back");
        assert_eq!(
            addr.send(HeldAttempts(id)).await.expect("answers"),
            vec![2],
            "the held copy goes on from the claim's count"
        );
    }

    /// A panic in a request's future, which no handler's guard runs, restarts the actor
    /// too: the message is attempted again and sent, and the provider holds nothing
    /// after. Before, the panic ended the actor's future unseen and it held the message
    /// (and its backlog slot) until the process restarted.
    #[actix::test]
    async fn a_request_that_panics_restarts_the_provider_and_its_message_is_sent() {
        let (_dir, _, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(100));
        let addr = supervised(config(), &store, &metrics, &backlog);
        let id = store_one(&store, 0).await;
        backlog.add(1);
        addr.send(RequestPanics(id))
            .await
            .expect("the actor answers");

        poll_until("the message to be sent", async || {
            let found = store.get_message(id).await.expect("read");
            found.is_some_and(|(m, _)| m.status == "sent")
        })
        .await;
        // The slot comes back once the actor hears its record landed, a moment after the
        // record is readable.
        poll_until("the backlog slot to come back", async || {
            backlog.pending() == 0
        })
        .await;
        let status = addr
            .send(GetProviderStatus)
            .await
            .expect("the actor answers");
        assert_eq!(status.pending, 0);
        assert_eq!(backlog.pending(), 0);
    }

    /// A message whose attempt has landed already (a sweep read it `queued` just before,
    /// after a database outage longer than its lease) reaches a real provider again: no
    /// request leaves, nothing is counted, and the provider holds nothing after.
    #[actix::test]
    async fn a_real_provider_sends_nothing_for_a_message_already_attempted() {
        let (_dir, _, store) = sqlite_store();
        let metrics = sms_metrics();
        let backlog = Arc::new(Backlog::new(100));
        let log = Logger::root(slog::Discard, o!());
        // Stands for the provider's API: any request is a connection here.
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        api.set_nonblocking(true).expect("non-blocking");
        let sender = HttpSender::new(
            crate::senders::Api::Twilio {
                account_sid: "AC1".into(),
                auth_token: crate::senders::Secret::new("t".into()),
                status_callback: None,
            },
            &format!("http://{}", api.local_addr().expect("address")),
            Duration::from_millis(200),
        )
        .expect("client");
        let real = ProviderConfig {
            sender: Some(Arc::new(sender)),
            ..config()
        };
        let addr =
            ProviderActor::new(real, store.clone(), metrics.clone(), backlog.clone(), &log).start();
        let id = store_one(&store, 0).await;
        store
            .record_attempt(AttemptRecord {
                provider_message_id: Some("SM1".into()),
                ..sent_record(id)
            })
            .await
            .expect("recorded");
        backlog.add(1);
        addr.do_send(first_dispatch(id));

        poll_until("the provider to let the message go", async || {
            addr.send(GetHeldIds)
                .await
                .expect("the actor answers")
                .is_empty()
                && backlog.pending() == 0
        })
        .await;
        assert!(api.accept().is_err(), "a request left for a sent message");
        let attempts = metrics
            .dispatch_attempts
            .with_label_values(&["sms-mms", "sms"])
            .get();
        assert_eq!(attempts, 0);
        let (message, recorded) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!((message.status.as_str(), recorded.len()), ("sent", 1));
    }

    /// A provider whose every attempt fails (two at most, 300 ms apart) on a SQLite store
    /// that refuses the attempt records numbered in `refused` (SQL `VALUES` rows) until
    /// the test deletes them from `refused_attempts` through `gate`; one message sent to it.
    struct Refusing {
        _dir: tempfile::TempDir,
        store: Store,
        gate: diesel::SqliteConnection,
        addr: Addr<ProviderActor>,
        metrics: Arc<Metrics>,
        id: i64,
    }

    impl Refusing {
        async fn start(refused: &str) -> Refusing {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;

            let (dir, url, store) = sqlite_store();
            let mut gate = diesel::SqliteConnection::establish(&url["sqlite://".len()..])
                .expect("a second connection");
            gate.batch_execute(&format!(
                "PRAGMA busy_timeout = 5000;
                 CREATE TABLE refused_attempts (attempt INTEGER NOT NULL);
                 INSERT INTO refused_attempts VALUES {refused};
                 CREATE TRIGGER refuse_attempts BEFORE INSERT ON dispatch_attempts
                 WHEN NEW.attempt IN (SELECT attempt FROM refused_attempts)
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            ))
            .expect("the gate");

            let mut config = config();
            config.latency = Duration::from_millis(10);
            config.odds.error_pct = 100.0;
            config.retry.max_attempts = 2;
            // Far enough apart that the two records never share a batch (a refused record
            // fails its whole batch, and both would then be written again together each
            // time), and attempt 2's comes well between two tries of attempt 1's.
            config.retry.backoff_initial = Duration::from_millis(300);
            config.retry.backoff_max = Duration::from_millis(300);
            let metrics = sms_metrics();
            let backlog = Arc::new(Backlog::new(100));
            let log = Logger::root(slog::Discard, o!());
            let addr = ProviderActor::new(
                config,
                store.clone(),
                metrics.clone(),
                backlog.clone(),
                &log,
            )
            .start();

            let id = store_and_dispatch(&store, &backlog, &addr, 1).await;
            Refusing {
                _dir: dir,
                store,
                gate,
                addr,
                metrics,
                id,
            }
        }
    }

    /// Opens `Refusing`'s gate to every record and waits until the provider holds no
    /// message any more (`what` names that moment if it never comes).
    async fn let_every_record_through(
        gate: &mut diesel::SqliteConnection,
        addr: &Addr<ProviderActor>,
        what: &str,
    ) {
        use diesel::connection::SimpleConnection;

        gate.batch_execute("DELETE FROM refused_attempts")
            .expect("the gate opens");
        poll_until(what, async || {
            addr.send(GetHeldIds)
                .await
                .expect("the actor answers")
                .is_empty()
        })
        .await;
    }

    /// A record's task that panics still lets its message go, and lets the message's next
    /// record go on: were it to stay counted, its lease would be renewed until a restart.
    #[actix::test]
    async fn a_record_task_that_panics_still_settles() {
        let (_dir, _, store) = sqlite_store();
        let log = Logger::root(slog::Discard, o!());
        let addr = ProviderActor::new(
            config(),
            store,
            sms_metrics(),
            Arc::new(Backlog::new(10)),
            &log,
        )
        .start();

        addr.send(RecordPanics(7)).await.expect("the actor answers");
        poll_until("both records to settle", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") == 0
        })
        .await;
        assert!(addr
            .send(GetHeldIds)
            .await
            .expect("the actor answers")
            .is_empty());
        assert!(addr.connected(), "the provider itself is unharmed");
    }

    /// Attempt 1's record is retried (the database refuses it) while attempt 2 is made and
    /// its record is refused too; when attempt 1's lands, the message must still be among
    /// the leases to renew: its last record is not stored yet, and were its lease to lapse,
    /// another instance would send it again.
    #[actix::test]
    async fn a_message_stays_leased_until_its_last_record_lands() {
        use diesel::connection::SimpleConnection;

        let Refusing {
            _dir,
            store,
            mut gate,
            addr,
            id,
            ..
        } = Refusing::start("(1), (2)").await;
        poll_until("both attempts' records on their way", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") == 2
        })
        .await;
        let held = addr.send(GetHeldIds).await.expect("the actor answers");
        assert_eq!(held, vec![id], "finished, but its records are not stored");

        gate.batch_execute("DELETE FROM refused_attempts WHERE attempt = 1")
            .expect("attempt 1 let through");
        poll_until("attempt 1's record to land", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") < 2
        })
        .await;
        let (_, recorded) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!(recorded.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1]);
        let held = addr.send(GetHeldIds).await.expect("the actor answers");
        assert_eq!(held, vec![id], "attempt 2's record is still on its way");

        let_every_record_through(&mut gate, &addr, "attempt 2's record to land").await;
        let (message, recorded) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!(recorded.len(), 2);
        assert_eq!(message.status, "failed");
    }

    /// A message whose final attempt's record is still on its way (the database refuses
    /// it) is handed back, as a sweep does once the lease lapsed in a long outage: it is
    /// not taken in again, so no attempt is made twice. A retry's dispatch, which has
    /// made as many attempts as are on their way, is taken.
    #[actix::test]
    async fn a_message_whose_record_is_on_its_way_is_not_taken_again() {
        let Refusing {
            _dir,
            mut gate,
            addr,
            metrics,
            id,
            ..
        } = Refusing::start("(1), (2)").await;
        poll_until("both attempts' records on their way", async || {
            addr.send(CountUnrecorded).await.expect("the actor answers") == 2
        })
        .await;
        let attempts = || {
            metrics
                .dispatch_attempts
                .with_label_values(&["sms-mms", "sms"])
                .get()
        };
        assert_eq!(attempts(), 2);

        addr.do_send(first_dispatch(id));
        // Answered after the dispatch: an attempt it started is counted by now.
        let status = addr
            .send(GetProviderStatus)
            .await
            .expect("the actor answers");
        assert_eq!((status.pending, attempts()), (0, 2));

        // One read after those records (a retry of the message once `failed` landed) has
        // made that many attempts: it is taken.
        addr.do_send(Dispatch {
            attempts_made: 2,
            retry_base: 2,
            ..first_dispatch(id)
        });
        let status = addr
            .send(GetProviderStatus)
            .await
            .expect("the actor answers");
        assert_eq!((status.pending, attempts()), (1, 3));
        let_every_record_through(&mut gate, &addr, "every record to land").await;
    }

    /// Attempt 1's record is refused for a while, attempt 2's would be taken at once: it
    /// still lands after attempt 1's, so the attempts list never skips an attempt.
    #[actix::test]
    async fn a_record_written_again_still_lands_before_the_next() {
        use diesel::RunQueryDsl;

        let Refusing {
            _dir,
            store,
            mut gate,
            addr,
            metrics,
            id,
        } = Refusing::start("(1)").await;
        let errors = || {
            metrics
                .dispatch_outcomes
                .with_label_values(&["sms-mms", "sms", "error"])
                .get()
        };
        poll_until("both attempts made", async || errors() == 2).await;
        // Attempt 1's record has been refused at least once by now (it was written before
        // attempt 2 was made); attempt 2's was free to land at once.
        let (message, recorded) = store.get_message(id).await.expect("read").expect("found");
        assert!(recorded.is_empty(), "{recorded:?}");
        assert_eq!(message.status, "queued");

        let_every_record_through(&mut gate, &addr, "both records to land").await;
        let landed: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "(SELECT group_concat(attempt, ',') FROM \
             (SELECT attempt FROM dispatch_attempts ORDER BY id))",
        ))
        .get_result(&mut gate)
        .expect("the order they landed in");
        assert_eq!(landed, "1,2");
        let (message, _) = store.get_message(id).await.expect("read").expect("found");
        assert_eq!(message.status, "failed");
    }
}
