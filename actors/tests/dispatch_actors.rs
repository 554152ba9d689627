//! Actor-level tests of routing and dispatch: a real `RouterActor` with real
//! `ProviderActor`s over a temporary SQLite store, driven by messages. Waiting is polling
//! the store or the metrics against a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use messaging_actors::admission::Backlog;
use messaging_actors::breaker::{BreakerConfig, BreakerState};
use messaging_actors::domain::{Channel, MessageContent, Timestamp};
use messaging_actors::metrics::Metrics;
use messaging_actors::outcome::{Outcome, OutcomeOdds, OutcomeStream, RetryPolicy};
use messaging_actors::provider::{self, ProviderConfig};
use messaging_actors::router::{
    AcceptOutbound, ClaimQueued, ListProviders, Registry, RequeueFailed, ResumeQueued, RouteError,
    RouteQueued, RouterActor,
};
use messaging_actors::store::{
    self, AttemptView, MessageView, NewOutbound, OutboundStored, QueuedMessage, RequeueTarget,
    Requeued, Store,
};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(20);
const NO_FAULTS: OutcomeOdds = OutcomeOdds {
    timeout_pct: 0.0,
    error_pct: 0.0,
    ratelimit_pct: 0.0,
};

fn provider(
    name: &str,
    channels: &[Channel],
    seed: Option<u64>,
    odds: OutcomeOdds,
) -> ProviderConfig {
    ProviderConfig {
        name: name.to_owned(),
        channels: channels.to_vec(),
        seed,
        odds,
        latency: Duration::ZERO,
        timeout: Duration::ZERO,
        retry: RetryPolicy {
            max_attempts: 5,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
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

struct Harness {
    router: Addr<RouterActor>,
    store: Store,
    metrics: Arc<Metrics>,
    backlog: Arc<Backlog>,
    _dir: TempDir,
}

fn start(providers: Vec<ProviderConfig>, backlog_limit: u64) -> Harness {
    start_with_lease(providers, backlog_limit, Duration::from_secs(30))
}

fn start_with_lease(
    providers: Vec<ProviderConfig>,
    backlog_limit: u64,
    lease: Duration,
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let timeout = Duration::from_secs(5);
    let pool = store::open(&url, 2, 1, timeout).expect("open store");
    let store = Store::start(pool, 2, lease, timeout);
    let registry = Registry::new(
        [
            (Channel::Sms, "sms-mms".to_owned()),
            (Channel::Mms, "sms-mms".to_owned()),
            (Channel::Email, "email".to_owned()),
        ],
        providers.iter().map(|p| p.name.clone()).collect(),
    );
    let metrics = Arc::new(Metrics::new(&registry.providers()).expect("metrics"));
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let backlog = Arc::new(Backlog::new(backlog_limit));
    let providers = Arc::new(provider::start_all(
        providers, &store, &metrics, &backlog, &log,
    ));
    let router = RouterActor::new(
        registry,
        providers,
        store.clone(),
        metrics.clone(),
        backlog.clone(),
        log,
    )
    .start();
    Harness {
        router,
        store,
        metrics,
        backlog,
        _dir: dir,
    }
}

fn content(channel: Channel, n: usize) -> MessageContent {
    let (from, to) = match channel {
        Channel::Email => ("a@example.com".to_owned(), format!("b{n}@example.com")),
        _ => ("+12016661234".to_owned(), format!("+1804555{n:04}")),
    };
    MessageContent {
        channel,
        from,
        to,
        body: format!("message {n}"),
        attachments: (channel == Channel::Mms).then(|| vec!["https://a.io/x.png".to_owned()]),
        timestamp: Timestamp::parse_rfc3339("2024-11-01T14:00:00Z").expect("valid"),
        subject: None,
    }
}

impl Harness {
    async fn accept(&self, channel: Channel, n: usize) -> Result<i64, RouteError> {
        self.router
            .send(AcceptOutbound {
                content: content(channel, n),
                idempotency: None,
                options: Default::default(),
            })
            .await
            .expect("router answers")
            .map(|accepted| accepted.id)
    }

    /// Waits until both slots of a backlog of two are free (a finished message's slot
    /// comes back once its record settles, a moment after the record is readable).
    async fn room_for_two(&self) {
        let started = Instant::now();
        while self.backlog.free() < 2 {
            assert!(started.elapsed() < DEADLINE, "no room came back");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the message leaves `queued`.
    async fn finished(&self, id: i64) -> (MessageView, Vec<AttemptView>) {
        let started = Instant::now();
        loop {
            let found = self.store.get_message(id).await.expect("read");
            if let Some((message, attempts)) = found {
                if message.status != "queued" {
                    return (message, attempts);
                }
            }
            assert!(started.elapsed() < DEADLINE, "message {id} never finished");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn counter(&self, provider: &str, channel: &str) -> u64 {
        self.metrics
            .dispatch_attempts
            .with_label_values(&[provider, channel])
            .get()
    }
}

#[actix::test]
async fn each_channel_is_dispatched_by_its_dedicated_provider() {
    let h = start(
        vec![
            provider("sms-mms", &[Channel::Sms, Channel::Mms], Some(1), NO_FAULTS),
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        100,
    );
    for (n, (channel, expected)) in [
        (Channel::Sms, "sms-mms"),
        (Channel::Mms, "sms-mms"),
        (Channel::Email, "email"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = h.accept(channel, n).await.expect("accepted");
        let (message, attempts) = h.finished(id).await;
        assert_eq!(message.status, "sent");
        assert_eq!(message.provider.as_deref(), Some(expected));
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].provider, expected);
    }
    assert_eq!(h.counter("sms-mms", "sms"), 1);
    assert_eq!(h.counter("sms-mms", "mms"), 1);
    assert_eq!(h.counter("email", "email"), 1);
}

#[actix::test]
async fn the_kth_attempt_gets_the_kth_draw_whatever_the_latencies() {
    let odds = OutcomeOdds {
        timeout_pct: 20.0,
        error_pct: 20.0,
        ratelimit_pct: 20.0,
    };
    let mut config = provider("sms-mms", &[Channel::Sms], Some(42), odds);
    config.retry.max_attempts = 1;
    // Timeouts take longer than the rest, so attempts finish out of order.
    config.latency = Duration::from_millis(2);
    config.timeout = Duration::from_millis(30);
    // 40% failures open the breaker now and then; it may delay attempts, never reorder
    // the draws.
    config.breaker.open = Duration::from_millis(5);
    let h = start(
        vec![config, provider("email", &[Channel::Email], None, odds)],
        100,
    );

    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(h.accept(Channel::Sms, n).await.expect("accepted"));
    }
    let mut observed = Vec::new();
    for id in ids {
        let (_, attempts) = h.finished(id).await;
        assert_eq!(attempts.len(), 1);
        observed.push(Outcome::parse(&attempts[0].outcome).expect("known outcome"));
    }
    let mut stream = OutcomeStream::new(Some(42), odds);
    let expected: Vec<Outcome> = (0..40).map(|_| stream.draw()).collect();
    assert_eq!(observed, expected);
}

/// Messages accepted in one turn of a thread reach their providers together (one mailbox
/// item per provider): each still goes to its own provider, none is lost, and each
/// provider takes them in the order they were accepted (its kth attempt, the kth draw).
#[actix::test]
async fn messages_accepted_together_reach_their_own_providers_in_order() {
    // Rate limits vary the draws without opening a breaker (they count as neither).
    let odds = OutcomeOdds {
        ratelimit_pct: 50.0,
        ..NO_FAULTS
    };
    let mut sms = provider("sms-mms", &[Channel::Sms], Some(7), odds);
    sms.retry.max_attempts = 1;
    let mut email = provider("email", &[Channel::Email], Some(8), odds);
    email.retry.max_attempts = 1;
    let h = start(vec![sms, email], 100);

    // Every request is in the router's mailbox before the first is answered, so their
    // writes share commits and their answers come in bursts, many to a turn of the loop.
    let requests: Vec<_> = (0..60)
        .map(|n| {
            let channel = if n % 2 == 0 {
                Channel::Sms
            } else {
                Channel::Email
            };
            let request = h.router.send(AcceptOutbound {
                content: content(channel, n),
                idempotency: None,
                options: Default::default(),
            });
            (channel, request)
        })
        .collect();
    let mut accepted = Vec::new();
    for (channel, request) in requests {
        let id = request.await.expect("router answers").expect("accepted").id;
        accepted.push((channel, id));
    }

    for (channel, name, seed) in [(Channel::Sms, "sms-mms", 7), (Channel::Email, "email", 8)] {
        let mut ids: Vec<i64> = accepted
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        let mut observed = Vec::new();
        for id in ids {
            let (message, attempts) = h.finished(id).await;
            assert_eq!(message.provider.as_deref(), Some(name));
            assert_eq!(attempts.len(), 1, "message {id}");
            assert_eq!(attempts[0].provider, name, "message {id}");
            observed.push(Outcome::parse(&attempts[0].outcome).expect("known outcome"));
        }
        let mut stream = OutcomeStream::new(Some(seed), odds);
        let expected: Vec<Outcome> = (0..30).map(|_| stream.draw()).collect();
        assert_eq!(observed, expected, "{name} took its messages out of order");
    }
}

#[actix::test]
async fn errors_are_retried_until_max_attempts_then_the_message_fails() {
    let all_errors = OutcomeOdds {
        error_pct: 100.0,
        ..NO_FAULTS
    };
    let all_limited = OutcomeOdds {
        ratelimit_pct: 100.0,
        ..NO_FAULTS
    };
    let mut email = provider("email", &[Channel::Email], Some(2), all_limited);
    email.retry.max_attempts = 2;
    let h = start(
        vec![
            provider("sms-mms", &[Channel::Sms], Some(1), all_errors),
            email,
        ],
        100,
    );

    let id = h.accept(Channel::Sms, 0).await.expect("accepted");
    let (message, attempts) = h.finished(id).await;
    assert_eq!(message.status, "failed");
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert!(attempts
        .iter()
        .all(|a| a.outcome == "error" && a.error_code.as_deref() == Some("500")));
    assert_eq!(
        h.metrics
            .messages_failed
            .with_label_values(&["sms-mms", "sms"])
            .get(),
        1
    );

    let id = h.accept(Channel::Email, 0).await.expect("accepted");
    let (message, attempts) = h.finished(id).await;
    assert_eq!(message.status, "failed");
    assert_eq!(attempts.len(), 2);
    assert!(attempts
        .iter()
        .all(|a| a.error_code.as_deref() == Some("429")));
}

#[actix::test]
async fn an_unknown_channel_is_skipped_counted_and_failed() {
    let h = start(
        vec![
            provider("sms-mms", &[Channel::Sms], Some(1), NO_FAULTS),
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        100,
    );
    let id = h.accept(Channel::Sms, 0).await.expect("accepted");
    h.finished(id).await;
    let attempts_before = h.counter("sms-mms", "sms");

    // The same stored message, met again as a dispatch event with a channel we do not know.
    h.router
        .send(RouteQueued(QueuedMessage {
            id,
            channel: "voice".to_owned(),
            provider: Some("sms-mms".to_owned()),
            from: "+12016661234".to_owned(),
            retry_base: 0,
            attempts_made: 0,
            next_attempt_at: None,
        }))
        .await
        .expect("router answers");
    assert_eq!(h.metrics.invalid_routing.get(), 1);
    assert_eq!(
        h.counter("sms-mms", "sms"),
        attempts_before,
        "no attempt made"
    );
    let (message, attempts) = h.store.get_message(id).await.expect("read").expect("found");
    // The row was already sent: failing it for good is refused, a final status is final.
    // (tests/it/dispatch.rs fails a queued `voice` row at start end to end.)
    assert_eq!(message.status, "sent");
    assert_eq!(attempts.len(), 1, "only the earlier real attempt");
}

#[actix::test]
async fn a_provider_keeps_many_attempts_in_flight_at_once() {
    let mut slow = provider("sms-mms", &[Channel::Sms], Some(1), NO_FAULTS);
    slow.latency = Duration::from_secs(30);
    let h = start(
        vec![
            slow,
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        100,
    );
    for n in 0..50 {
        h.accept(Channel::Sms, n).await.expect("accepted");
    }
    let started = Instant::now();
    while h.counter("sms-mms", "sms") < 50 {
        assert!(started.elapsed() < DEADLINE, "attempts did not all start");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let finished: u64 = ["success", "error", "timeout", "rate_limited"]
        .iter()
        .map(|o| {
            h.metrics
                .dispatch_outcomes
                .with_label_values(&["sms-mms", "sms", o])
                .get()
        })
        .sum();
    assert_eq!(finished, 0, "all 50 started while none had finished");
    let statuses = h.router.send(ListProviders).await.expect("router answers");
    let sms = statuses
        .iter()
        .find(|s| s.name == "sms-mms")
        .expect("listed");
    assert_eq!(sms.pending, 50);
    assert_eq!(
        h.metrics
            .pending_messages
            .with_label_values(&["sms-mms"])
            .get(),
        50
    );
}

#[actix::test]
async fn the_backlog_limit_refuses_new_messages_while_full() {
    // Attempts take a minute: nothing can finish while the test looks.
    let mut slow = provider("sms-mms", &[Channel::Sms], Some(1), NO_FAULTS);
    slow.latency = Duration::from_secs(60);
    let h = start(
        vec![
            slow,
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        3,
    );
    for n in 0..3 {
        h.accept(Channel::Sms, n).await.expect("accepted");
    }
    for (channel, n) in [(Channel::Sms, 3), (Channel::Email, 4)] {
        match h.accept(channel, n).await {
            Err(RouteError::Overloaded { pending: 3 }) => {}
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
}

#[actix::test]
async fn the_backlog_frees_a_slot_for_every_finished_message() {
    let h = start(
        vec![
            provider("sms-mms", &[Channel::Sms], Some(1), NO_FAULTS),
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        3,
    );
    // Three rounds of a full backlog: each is only accepted if the one before gave back
    // every slot as its messages finished.
    for round in 0..3 {
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(
                h.accept(Channel::Sms, round * 3 + n)
                    .await
                    .expect("accepted"),
            );
        }
        for id in ids {
            assert_eq!(h.finished(id).await.0.status, "sent");
        }
    }
}

#[actix::test]
async fn one_providers_failures_open_only_its_own_breaker() {
    let all_errors = OutcomeOdds {
        error_pct: 100.0,
        ..NO_FAULTS
    };
    let mut failing = provider("sms-mms", &[Channel::Sms], Some(1), all_errors);
    failing.retry.max_attempts = 100;
    let h = start(
        vec![
            failing,
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        1000,
    );
    let mut sms = Vec::new();
    for n in 0..12 {
        sms.push(h.accept(Channel::Sms, n).await.expect("accepted"));
        let email = h.accept(Channel::Email, n).await.expect("accepted");
        assert_eq!(h.finished(email).await.0.status, "sent");
    }
    let started = Instant::now();
    let statuses = loop {
        let statuses = h.router.send(ListProviders).await.expect("router answers");
        if statuses
            .iter()
            .any(|s| s.breaker_state == BreakerState::Open)
        {
            break statuses;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the sms-mms breaker never opened"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    };
    let by_name = |name: &str| statuses.iter().find(|s| s.name == name).expect("listed");
    assert_eq!(by_name("sms-mms").breaker_state, BreakerState::Open);
    assert_eq!(by_name("email").breaker_state, BreakerState::Closed);
    assert_eq!(by_name("email").failure_rate, 0.0);
    assert_eq!(
        by_name("sms-mms").pending,
        12,
        "waiting, not dropped or failed"
    );

    // Exactly the minimum number of failures opened it, and then attempts stopped.
    assert_eq!(h.counter("sms-mms", "sms"), 10);
    let transitions = |provider: &str, from: &str, to: &str| {
        h.metrics
            .breaker_transitions
            .with_label_values(&[provider, from, to])
            .get()
    };
    assert_eq!(transitions("sms-mms", "closed", "open"), 1);
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        assert_eq!(transitions("email", from, to), 0);
    }
    // Email keeps flowing while SMS waits.
    let email = h.accept(Channel::Email, 99).await.expect("accepted");
    assert_eq!(h.finished(email).await.0.status, "sent");
    for id in sms {
        let (message, _) = h.store.get_message(id).await.expect("read").expect("found");
        assert_eq!(message.status, "queued");
    }
    assert!(
        h.metrics
            .breaker_rejections
            .with_label_values(&["sms-mms"])
            .get()
            >= 1
    );
    assert_eq!(
        h.metrics
            .breaker_rejections
            .with_label_values(&["email"])
            .get(),
        0
    );
    assert_eq!(
        h.metrics
            .breaker_state
            .with_label_values(&["sms-mms", "open"])
            .get(),
        1
    );
    assert_eq!(
        h.metrics
            .breaker_state
            .with_label_values(&["email", "closed"])
            .get(),
        1
    );
}

#[actix::test]
async fn after_open_time_only_the_trial_calls_run_and_their_verdict_decides() {
    let all_errors = OutcomeOdds {
        error_pct: 100.0,
        ..NO_FAULTS
    };
    let mut failing = provider("sms-mms", &[Channel::Sms], Some(1), all_errors);
    failing.retry.max_attempts = 100;
    failing.retry.backoff_initial = Duration::from_millis(1);
    failing.breaker = BreakerConfig {
        window_size: 4,
        minimum_calls: 4,
        failure_rate_threshold: 0.5,
        open: Duration::from_millis(200),
        half_open_calls: 2,
    };
    let h = start(
        vec![
            failing,
            provider("email", &[Channel::Email], Some(2), NO_FAULTS),
        ],
        100,
    );
    for n in 0..6 {
        h.accept(Channel::Sms, n).await.expect("accepted");
    }
    let transitions = |from: &str, to: &str| {
        h.metrics
            .breaker_transitions
            .with_label_values(&["sms-mms", from, to])
            .get()
    };
    // Each cycle is open (open time) -> half_open -> two failing trials -> open. Between
    // cycles the counters are still, and then attempts are exactly 4 + 2 per cycle: any
    // attempt let through while open would break that for good.
    let started = Instant::now();
    let cycles = loop {
        let cycles = transitions("half_open", "open");
        let settled = cycles >= 1
            && transitions("open", "half_open") == cycles
            && h.counter("sms-mms", "sms") == 4 + 2 * cycles;
        if settled {
            break cycles;
        }
        assert!(started.elapsed() < DEADLINE, "no settled half-open verdict");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(cycles >= 1);
    assert_eq!(transitions("closed", "open"), 1);
    assert_eq!(transitions("half_open", "closed"), 0);
}

/// At a graceful stop the instance hands its queued work back; its lease keeper keeps
/// sweeping until the process exits and must not claim that work straight back, or the
/// next start finds it leased and waits out the lease.
#[actix_rt::test]
async fn after_its_leases_are_released_an_instance_claims_nothing() {
    let mut slow = provider("sms-mms", &[Channel::Sms, Channel::Mms], Some(1), NO_FAULTS);
    slow.latency = Duration::from_secs(600);
    let email = provider("email", &[Channel::Email], Some(2), NO_FAULTS);
    let h = start(vec![slow, email], 1_000);
    for n in 0..3 {
        h.accept(Channel::Sms, n).await.expect("accepted");
    }
    assert_eq!(
        h.store.release_leases(Vec::new()).await.expect("released"),
        3
    );
    let claimed = h.store.claim_queued(10, 0).await.expect("claim");
    assert!(claimed.is_empty(), "claimed back: {}", claimed.len());
}

/// `count` queued messages no one holds, stored with leases of `lease` (no lease keeper
/// renews them here), in a harness of `backlog_limit` 2 whose SMS attempts take half a
/// second.
async fn waiting_messages(count: usize, lease: Duration) -> (Harness, Vec<i64>) {
    let mut slow = provider("sms-mms", &[Channel::Sms], Some(1), NO_FAULTS);
    slow.latency = Duration::from_millis(500);
    let email = provider("email", &[Channel::Email], Some(2), NO_FAULTS);
    let h = start_with_lease(vec![slow, email], 2, lease);
    let mut ids = Vec::new();
    for n in 0..count {
        let stored = h
            .store
            .insert_outbound(NewOutbound {
                content: content(Channel::Sms, n),
                provider: Some("sms-mms".to_owned()),
                idempotency: None,
                lease: None,
                status_callback: None,
                send_at: None,
            })
            .await
            .expect("stored");
        let OutboundStored::Created { id, .. } = stored else {
            panic!("not created: {stored:?}");
        };
        ids.push(id);
    }
    (h, ids)
}

/// A sweep that fills the backlog stops there; the tick's claim, once there is room,
/// takes what it can and then waits for slots to come back and takes the rest, with no
/// further tick.
#[actix_rt::test]
async fn the_ticks_claim_waits_for_room_and_takes_the_rest() {
    // Leases that lapse at once: a sweep takes only lapsed ones.
    let (h, ids) = waiting_messages(5, Duration::from_millis(50)).await;
    let started = Instant::now();
    while !h.store.any_claimable(ids[4] - 1).await.expect("read") {
        assert!(started.elapsed() < DEADLINE, "the leases did not lapse");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    h.router
        .send(ClaimQueued::Sweep)
        .await
        .expect("router answers");
    for id in &ids[..2] {
        assert_eq!(h.finished(*id).await.0.status, "sent");
    }
    assert_eq!(
        h.counter("sms-mms", "sms"),
        2,
        "the sweep stopped at the limit"
    );
    h.room_for_two().await;
    // The tick's claim takes two, waits for their slots, takes the fifth.
    h.router
        .send(ClaimQueued::IfWaitingForRoom)
        .await
        .expect("router answers");
    for id in &ids[2..] {
        assert_eq!(h.finished(*id).await.0.status, "sent");
    }
    assert_eq!(h.counter("sms-mms", "sms"), 5);
}

/// Messages accepted earlier and waiting in the database for room in the backlog are
/// part of it: a claim takes only what the backlog has room for, and until the rest are
/// claimed a new message is refused, even when room has come back meanwhile.
#[actix_rt::test]
async fn messages_waiting_in_the_database_for_room_go_before_new_ones() {
    // Leases of a dead predecessor on SQLite, still running: the start clears them, so
    // the third is not left to wait 30 s for its lease to lapse.
    let (h, ids) = waiting_messages(3, Duration::from_secs(30)).await;
    let resumed = h.router.send(ResumeQueued).await.expect("router answers");
    assert_eq!(resumed, Ok(2), "as many as the backlog has room for");
    for id in &ids[..2] {
        assert_eq!(h.finished(*id).await.0.status, "sent");
    }
    // Room again, but the third message was accepted first.
    h.room_for_two().await;
    let refused = h.accept(Channel::Email, 0).await;
    assert!(
        matches!(refused, Err(RouteError::Overloaded { .. })),
        "{refused:?}"
    );
    h.router
        .send(ClaimQueued::IfWaitingForRoom)
        .await
        .expect("router answers");
    assert_eq!(h.finished(ids[2]).await.0.status, "sent");
    let email = h
        .accept(Channel::Email, 0)
        .await
        .expect("room for new messages");
    assert_eq!(h.finished(email).await.0.status, "sent");
}

/// A claim that has gone past some ids looks again from the first before it concludes
/// none are left: a message below its place that became claimable meanwhile (here a
/// bulk retry's, while the claim waited for room) is not left for the next sweep.
#[actix_rt::test]
async fn a_claim_looks_again_from_the_first_id_before_it_ends() {
    let (h, ids) = waiting_messages(6, Duration::from_secs(30)).await;
    let since = Timestamp::now();
    h.store.mark_failed(ids[0]).await.expect("failed");
    let resumed = h.router.send(ResumeQueued).await.expect("router answers");
    assert_eq!(resumed, Ok(2));
    for id in &ids[1..3] {
        assert_eq!(h.finished(*id).await.0.status, "sent");
    }
    h.room_for_two().await;
    // The tick's claim takes the fourth and fifth, then waits for room with the sixth
    // left, its place past the first message's id.
    let tick = actix_rt::spawn(h.router.send(ClaimQueued::IfWaitingForRoom));
    let started = Instant::now();
    while h.counter("sms-mms", "sms") < 4 {
        assert!(
            started.elapsed() < DEADLINE,
            "the tick's claim did not start"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let requeued = h
        .router
        .send(RequeueFailed(RequeueTarget::Provider {
            name: "sms-mms".to_owned(),
            since,
        }))
        .await
        .expect("router answers");
    assert_eq!(requeued, Ok(Requeued::Many(1)));
    tick.await
        .expect("the tick's claim")
        .expect("router answers");
    for id in [ids[5], ids[0]] {
        assert_eq!(h.finished(id).await.0.status, "sent");
    }
}
