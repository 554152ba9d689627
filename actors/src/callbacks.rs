//! `CallbackWorker`: delivers the status callbacks of the outbox (CONTRACT section 10).
//! Every 200 ms, and sooner while a backlog waits (see `TryEnded`), it claims due
//! callbacks (leased, so one instance sends a given callback at a time; a dead instance's
//! leases lapse and its callbacks are claimed again), POSTs each with at most
//! `max_in_flight` in flight and `request_timeout` apiece, signed with Standard Webhooks
//! when a secret is set (the same `webhook-id` on every try), and records the fate: a 2xx
//! delivers, 410 gives up at once, anything else retries after 1 s doubling to 1 h until
//! `max_age` from the status change, then gives up.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, WrapFuture};
use serde_json::json;
use slog::{warn, Logger};

use crate::domain::Timestamp;
use crate::metrics::Metrics;
use crate::senders::Secret;
use crate::store::{AttemptView, CallbackFate, DueCallback, Store};

const POLL: Duration = Duration::from_millis(200);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Standard Webhooks secret (`whsec_...`); unsigned without one.
    pub secret: Option<Secret>,
    /// How long after its status change a callback is tried before it is given up.
    pub max_age: Duration,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
}

pub struct CallbackWorker {
    store: Store,
    metrics: Arc<Metrics>,
    config: CallbackConfig,
    client: reqwest::Client,
    signer: Option<Arc<standardwebhooks::Webhook>>,
    /// The tries under way here: how many (room for more) and which.
    sending: Sending,
    claiming: bool,
    /// The last claim filled all the room it had: more may be due than it took.
    backlog: bool,
    /// A graceful stop asked for no more tries.
    stopping: bool,
    log: Logger,
}

/// Starts no try from now on; answers how many are under way or being claimed. A
/// graceful stop asks until none is (or its drain time is up), so that a try the
/// receiver may have acted on has its result recorded and is not sent again after the
/// restart; one cut off at the exit keeps its lease until it lapses, then goes again.
pub struct StopCallbacks;

impl Message for StopCallbacks {
    type Result = usize;
}

impl Handler<StopCallbacks> for CallbackWorker {
    type Result = usize;

    fn handle(&mut self, _: StopCallbacks, _: &mut Context<Self>) -> usize {
        self.stopping = true;
        self.sending.len() + usize::from(self.claiming)
    }
}

/// A try has ended, delivered or not. While the receiver takes callbacks and more are due
/// than the last claim had room for, the worker claims again without waiting for the next
/// poll (64 per 200 ms capped a backlog at 320 a second); once half the room is free, so
/// that a claim takes a batch rather than a row. A try that failed (receiver down, the
/// database unreadable) stops that until the next claim, so a failing receiver or store is
/// never hurried.
struct TryEnded {
    delivered: bool,
}

impl Message for TryEnded {
    type Result = ();
}

impl Handler<TryEnded> for CallbackWorker {
    type Result = ();

    fn handle(&mut self, ended: TryEnded, ctx: &mut Context<Self>) {
        if !ended.delivered {
            self.backlog = false;
        }
        if self.backlog && self.room() * 2 >= self.config.max_in_flight {
            self.tick(ctx);
        }
    }
}

/// The wait before try `attempts + 1`: 1 s doubling, at most 1 h.
pub fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(31)))
        .min(LAST_RETRY)
}

impl CallbackWorker {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        config: CallbackConfig,
        log: &Logger,
    ) -> Result<CallbackWorker, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("messaging-service/", env!("CARGO_PKG_VERSION")))
            // A redirect is an answer like any other that is not 2xx: followed, a 302 would
            // turn the POST into a bodiless GET whose 200 counts as delivered, and a 307
            // would send the signed body wherever the receiver's `Location` says.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let signer = config
            .secret
            .as_ref()
            .and_then(|s| standardwebhooks::Webhook::new(s.expose()).ok())
            .map(Arc::new);
        Ok(CallbackWorker {
            store,
            metrics,
            config,
            client,
            signer,
            sending: Sending::default(),
            claiming: false,
            backlog: false,
            stopping: false,
            log: log.new(slog::o!("actor" => "callbacks")),
        })
    }

    /// The lease on a claimed callback: longer than one try's request. A try whose
    /// database calls around it are slow may outlast it: this instance's next claim may
    /// then take the callback again, and `Sending` keeps it from sending it twice; another
    /// instance may too, as after a crash (at least once, and `webhook-id` tells a repeat).
    fn lease(&self) -> Duration {
        self.config.request_timeout + Duration::from_secs(5)
    }

    /// Tries that may start now.
    fn room(&self) -> usize {
        self.config.max_in_flight.saturating_sub(self.sending.len())
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let room = self.room();
        if self.stopping || self.claiming || room == 0 {
            return;
        }
        self.claiming = true;
        let store = self.store.clone();
        let lease = self.lease();
        let claim = async move { store.claim_callbacks(room as i64, lease).await };
        ctx.spawn(claim.into_actor(self).map(move |claimed, worker, ctx| {
            worker.claiming = false;
            match claimed {
                // A stop came while this claim ran: nothing starts, and what it took waits
                // for its lease to lapse (a try begun now could outlast the stop's drain and
                // be sent again after the restart).
                Ok(_) if worker.stopping => {}
                Ok(due) => {
                    worker.backlog = due.len() >= room;
                    let me = ctx.address();
                    for callback in due {
                        // Claimed again while its try runs here (its lease lapsed): the
                        // try under way is the one that counts.
                        let Some(sending) = worker.sending.start(callback.id) else {
                            continue;
                        };
                        actix::spawn(worker.deliver(callback, sending, me.clone()));
                    }
                }
                Err(e) => {
                    worker.backlog = false;
                    warn!(worker.log, "could not claim callbacks"; "error" => e.to_string())
                }
            }
        }));
    }

    /// One try of one callback, to its fate in the outbox.
    fn deliver(
        &self,
        callback: DueCallback,
        sending: SendingOne,
        worker: Addr<CallbackWorker>,
    ) -> impl std::future::Future<Output = ()> {
        let (store, metrics, client, signer, log) = (
            self.store.clone(),
            self.metrics.clone(),
            self.client.clone(),
            self.signer.clone(),
            self.log.clone(),
        );
        let max_age = self.config.max_age;
        async move {
            // Held to the end of the try, whichever way it ends (a panic's unwinding too).
            let sending = sending;
            let body = match store.get_message(callback.message_id).await {
                Ok(Some((message, attempts))) => {
                    let attempts = attempts_told(&callback, &attempts);
                    json!({
                        "type": "message.status",
                        "timestamp": callback.created_at.to_rfc3339(),
                        "data": {
                            "id": message.id,
                            "status": match callback.event.as_str() {
                                "sent" | "failed" => callback.event.clone(),
                                _ => message.status.clone(),
                            },
                            // A receipt's event says what the receipt said: a `delivered`
                            // callback still retrying when a later bounce came stays
                            // `delivered` (the bounce has a callback of its own).
                            "delivery_status": match callback.event.as_str() {
                                "delivered" | "undelivered" => Some(callback.event.clone()),
                                _ => message.delivery_status,
                            },
                            "provider": message.provider,
                            "channel": message.channel,
                            "attempts": attempts.len(),
                            // A receipt's event carries the receipt's code (Twilio's
                            // `ErrorCode`, SendGrid's bounce status); a status, its last
                            // attempt's.
                            "error_code": match callback.event.as_str() {
                                "delivered" => None,
                                "undelivered" => message.delivery_error_code.clone(),
                                _ => attempts.last().and_then(|a| a.error_code.clone()),
                            },
                        },
                    })
                    .to_string()
                }
                // Unread now (the database): the lease lapses and it is claimed again.
                _ => {
                    drop(sending);
                    worker.do_send(TryEnded { delivered: false });
                    return;
                }
            };
            // The id (stable across tries) and the time go with every try, signed or not,
            // so a receiver can always drop a repeat.
            let seconds = Timestamp::now().unix_seconds();
            let mut request = client
                .post(&callback.url)
                .header("Content-Type", "application/json")
                .header("webhook-id", &callback.webhook_id)
                .header("webhook-timestamp", seconds.to_string());
            if let Some(signer) = &signer {
                if let Ok(signature) = signer.sign(&callback.webhook_id, seconds, body.as_bytes()) {
                    request = request.header("webhook-signature", signature);
                }
            }
            let (fate, result) = match request.body(body).send().await {
                Ok(response) if response.status().is_success() => (
                    CallbackFate::Delivered,
                    response.status().as_u16().to_string(),
                ),
                Ok(response) if response.status().as_u16() == 410 => {
                    (CallbackFate::GivenUp, "410".to_owned())
                }
                Ok(response) => retry(&callback, max_age, response.status().as_u16().to_string()),
                Err(e) if e.is_timeout() => retry(&callback, max_age, "timeout".to_owned()),
                Err(_) => retry(&callback, max_age, "connection".to_owned()),
            };
            let outcome = match fate {
                CallbackFate::Delivered => "delivered",
                CallbackFate::RetryAt(_) => "retried",
                CallbackFate::GivenUp => "given_up",
            };
            metrics.callbacks.with_label_values(&[outcome]).inc();
            let delivered = fate == CallbackFate::Delivered;
            if fate == CallbackFate::GivenUp {
                warn!(log, "callback given up";
                    "message_id" => callback.message_id, "webhook_id" => &callback.webhook_id,
                    "attempts" => callback.attempts + 1, "last_result" => &result);
            }
            if let Err(e) = store.finish_callback(callback.id, fate, result).await {
                // Its lease lapses and it is tried again: at least once.
                warn!(log, "callback result not recorded"; "webhook_id" => &callback.webhook_id,
                    "error" => e.to_string());
            }
            drop(sending);
            // Bounded: one per try, and tries are bounded by `max_in_flight`.
            worker.do_send(TryEnded { delivered });
        }
    }
}

/// The callbacks this instance is trying now, by id.
#[derive(Default, Clone)]
struct Sending(Arc<std::sync::Mutex<std::collections::HashSet<i64>>>);

/// One callback's place in `Sending`, given back when its try ends however it ends (a
/// panic's unwinding too).
struct SendingOne {
    sending: Sending,
    id: i64,
}

impl Sending {
    /// The set is one insert or remove at a time, left whole by each: a poisoned lock
    /// has nothing to repair.
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many tries are under way.
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Its place for callback `id`, or `None` while a try of it is under way here.
    fn start(&self, id: i64) -> Option<SendingOne> {
        self.lock().insert(id).then(|| SendingOne {
            sending: self.clone(),
            id,
        })
    }
}

impl Drop for SendingOne {
    fn drop(&mut self) {
        self.sending.lock().remove(&self.id);
    }
}

/// Another try after the backoff, unless that would be past `max_age`.
fn retry(callback: &DueCallback, max_age: Duration, result: String) -> (CallbackFate, String) {
    let next = Timestamp::after(backoff(callback.attempts + 1));
    let deadline = callback
        .created_at
        .shifted(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
    if next > deadline {
        (CallbackFate::GivenUp, result)
    } else {
        (CallbackFate::RetryAt(next), result)
    }
}

impl Actor for CallbackWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(POLL, |worker, ctx| worker.tick(ctx));
        ctx.run_interval(Duration::from_secs(1), |worker, _| {
            let (store, metrics) = (worker.store.clone(), worker.metrics.clone());
            actix::spawn(async move {
                if let Ok(pending) = store.pending_callbacks().await {
                    metrics.callbacks_pending.set(pending);
                }
            });
        });
    }
}

/// The attempts a callback tells of. It is read when it is sent, which may be after an
/// operator's retry of a failed message made more attempts: a `sent` or `failed`
/// callback tells of the attempts up to the one that set its status (whose record's time
/// is the callback's own, written by the same trigger), not of a later round's. A
/// receipt's tells of all of them: a sent message is never retried. A status set without
/// an attempt (no provider for the channel) tells of all it has.
fn attempts_told<'a>(callback: &DueCallback, attempts: &'a [AttemptView]) -> &'a [AttemptView] {
    if !matches!(callback.event.as_str(), "sent" | "failed") {
        return attempts;
    }
    let made_it = attempts
        .iter()
        .rposition(|a| Timestamp::parse_rfc3339(&a.at).is_ok_and(|at| at == callback.created_at));
    match made_it {
        Some(last) => &attempts[..=last],
        None => attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_a_second_and_doubles_to_an_hour() {
        let secs = |n| backoff(n).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(4)], [1, 2, 4, 8]);
        assert_eq!(secs(12), 2048);
        assert_eq!(secs(13), 3600);
        assert_eq!(secs(100), 3600);
    }

    /// `max_age_ms` as large as it goes means "never give up": the deadline saturates at
    /// the end of time rather than falling back to the status change itself, which gave
    /// every callback up at its first failure.
    #[test]
    fn the_largest_max_age_keeps_retrying() {
        let callback = DueCallback {
            id: 1,
            message_id: 1,
            webhook_id: "msg_1_sent_0".into(),
            event: "sent".into(),
            url: "http://127.0.0.1:9/hooks".into(),
            created_at: Timestamp::now(),
            attempts: 3,
        };
        let never = Duration::from_millis(i64::MAX.unsigned_abs());
        for max_age in [never, Duration::MAX, Duration::from_secs(86_400)] {
            let (fate, _) = retry(&callback, max_age, "500".into());
            assert!(matches!(fate, CallbackFate::RetryAt(_)), "{max_age:?}");
        }
        let (fate, _) = retry(&callback, Duration::from_secs(1), "500".into());
        assert!(matches!(fate, CallbackFate::GivenUp));
        let now = Timestamp::now();
        assert!(now.shifted(i64::MAX) > Timestamp::after(Duration::from_secs(1 << 40)));
        assert!(now.shifted(i64::MIN) < now.shifted(-1));
    }

    /// A callback claimed again while its try runs here (its lease lapsed while the
    /// database was slow) is not tried a second time at once; once the try ends, it may.
    #[test]
    fn a_callback_is_tried_once_at_a_time_here() {
        let sending = Sending::default();
        let first = sending.start(7).expect("the first try");
        assert!(sending.start(7).is_none(), "tried twice at once");
        let other = sending.start(8).expect("another callback");
        drop(first);
        assert!(sending.start(7).is_some(), "its try ended");
        assert_eq!(sending.len(), 1);
        drop(other);
        assert_eq!(sending.len(), 0);
    }
}
