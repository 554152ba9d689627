//! Routing: the registry (channel -> provider name, from `[routing]`) and the
//! `RouterActor`. The router accepts outbound messages (tags each with its
//! provider, has it stored, hands it to that provider's actor, answers) and routes the
//! queued messages recovery finds. A channel whose provider is missing is answered at once
//! with `RouteError::NoProvider`, the message stored `failed` so nothing retries it; a
//! stored message with an unknown channel is an invalid route, failed the same way.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter, Context, Handler, Message, ResponseFuture};
use slog::{error, info, warn, Logger};
use thiserror::Error;

use crate::admission::Backlog;
use crate::breaker::Override;
use crate::domain::{Channel, IdempotencyKey, MessageContent, Timestamp};
use crate::metrics::Metrics;
use crate::provider::{
    sender_key, Dispatch, DispatchMany, ForceBreaker, GetProviderStatus, ProviderActor,
    ProviderStatus,
};
use crate::store::{
    NewOutbound, OutboundStored, QueuedMessage, RequeueTarget, Requeued, Store, StoreError,
};

/// Channel -> provider, built once at start-up. A route may name a provider that does not
/// exist (or be empty): that is served as `NoProvider`, not refused at start.
#[derive(Debug, Clone)]
pub struct Registry {
    routes: HashMap<Channel, String>,
    providers: Vec<String>,
}

impl Registry {
    pub fn new(
        routes: impl IntoIterator<Item = (Channel, String)>,
        providers: Vec<String>,
    ) -> Self {
        Registry {
            routes: routes.into_iter().collect(),
            providers,
        }
    }

    /// The provider that serves `channel`, if it is defined.
    pub fn provider_for(&self, channel: Channel) -> Option<&str> {
        self.routes
            .get(&channel)
            .map(String::as_str)
            .filter(|name| self.providers.iter().any(|p| p == name))
    }

    /// Channels routed to nothing or to an undefined provider, with what they name.
    pub fn unserved(&self) -> Vec<(Channel, String)> {
        Channel::ALL
            .into_iter()
            .filter(|&c| self.provider_for(c).is_none())
            .map(|c| (c, self.routes.get(&c).cloned().unwrap_or_default()))
            .collect()
    }

    /// Each defined provider with the channels routed to it (possibly none).
    pub fn providers(&self) -> Vec<(String, Vec<Channel>)> {
        let mut map: BTreeMap<&str, Vec<Channel>> = self
            .providers
            .iter()
            .map(|p| (p.as_str(), Vec::new()))
            .collect();
        for channel in Channel::ALL {
            if let Some(provider) = self.provider_for(channel) {
                map.entry(provider).or_default().push(channel);
            }
        }
        map.into_iter()
            .map(|(name, channels)| (name.to_owned(), channels))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("no provider is configured for channel {channel}")]
    NoProvider { channel: String, message_id: i64 },
    #[error("the idempotency key was already used with a different request")]
    IdempotencyConflict,
    #[error("{pending} messages are waiting, the backlog limit")]
    Overloaded { pending: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the client is told on 202.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: i64,
    pub conversation_id: i64,
    pub channel: String,
    pub provider: String,
    /// True when an earlier request with the same idempotency key created the message.
    pub replayed: bool,
}

/// Accept one outbound message.
#[derive(Debug, Message)]
#[rtype(result = "Result<Accepted, RouteError>")]
pub struct AcceptOutbound {
    pub content: MessageContent,
    pub idempotency: Option<IdempotencyKey>,
    pub options: DeliveryOptions,
}

/// How the client wants to hear of the message and when it should leave (section 10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Where its final statuses are POSTed.
    pub status_callback: Option<String>,
    /// Not before this time; `None` or a past time means now.
    pub send_at: Option<Timestamp>,
}

/// Sends failed messages again (section 10's retry): the store requeues them, the router
/// hands them to their providers.
#[derive(Debug, Message)]
#[rtype(result = "Result<Requeued, StoreError>")]
pub struct RequeueFailed(pub RequeueTarget);

/// A dispatch event for a stored, queued message, its backlog slot taken even beyond the
/// limit (claims route their messages themselves, within the room there is). Its channel
/// is raw: an unknown one is an invalid route.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RouteQueued(pub QueuedMessage);

/// Hands the queued outbound messages in the database to their providers at start, in id
/// order and in batches of `CLAIM_BATCH`, as far as the backlog has room (the rest wait
/// in the database for `ClaimQueued`). Answers how many were handed over.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct ResumeQueued;

/// Claims queued messages that no instance holds (a lease lapsed, or a bulk retry left
/// none) as far as the backlog has room, and hands them to their providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum ClaimQueued {
    /// The lease keeper's sweep, every half lease.
    Sweep,
    /// The lease keeper's tick, every second: claims only when an earlier claim stopped
    /// at a full backlog and room has come back since.
    IfWaitingForRoom,
}

/// Every provider's status, by name.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ProviderStatus>")]
pub struct ListProviders;

/// An operator's breaker setting for one provider; `None` for an unknown provider.
#[derive(Debug, Message)]
#[rtype(result = "Option<ProviderStatus>")]
pub struct OverrideBreaker {
    pub provider: String,
    pub to: Override,
    /// The stored setting's stamp (`Store::set_breaker_override`).
    pub stamp: String,
}

/// Answers when the router runs; readiness asks it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

/// What the router's futures need, cheap to clone into them.
#[derive(Clone)]
struct Routes {
    providers: Arc<BTreeMap<String, Addr<ProviderActor>>>,
    store: Store,
    metrics: Arc<Metrics>,
    backlog: Arc<Backlog>,
    claims: Arc<Claims>,
    log: Logger,
}

/// What the router's claims share across its twins.
#[derive(Debug, Default)]
struct Claims {
    /// A claim is under way: one at a time, so that claims never share out the same
    /// free slots, and a backlog full for long keeps one of them looking, not a pile.
    running: AtomicBool,
    /// A claim was asked for since the running one began: it goes over everything once
    /// more before it ends.
    asked: AtomicBool,
}

/// The one claim under way, for as long as it lives.
struct Running(Arc<Claims>);

impl Running {
    fn try_start(claims: &Arc<Claims>) -> Option<Self> {
        claims
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Running(claims.clone()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

impl Routes {
    /// Claims queued messages in id order, `CLAIM_BATCH` at most at a time and no more
    /// than the backlog has free slots for, so that what waits in the database (a bulk
    /// retry of a million failures, an outage's worth) never all comes into memory at
    /// once. No slot is held across the claim's write: new messages are not refused while
    /// it waits for the writer; the claimed are counted once it answers. At a full
    /// backlog it asks the database whether any are left (then new messages are refused
    /// until they are claimed); if so and `wait`, it waits for slots to come back and
    /// goes on until none are left, else it returns and the lease keeper's tick goes on
    /// from there. Before it concludes that none are left, it looks again from the first
    /// id: messages below its place may have become claimable meanwhile (a second bulk
    /// retry, a lease lapsing). Logs each batch it takes under `logged`, if given.
    /// Answers how many it handed over, or `None` when another claim was under way: that
    /// one goes over everything again before it ends.
    async fn claim(&self, wait: bool, logged: Option<&str>) -> Result<Option<usize>, StoreError> {
        let mut count = 0;
        loop {
            // Asked before trying, so that a claim ending as this one fails to start
            // sees the ask once it has let go.
            self.claims.asked.store(true, Ordering::SeqCst);
            let Some(running) = Running::try_start(&self.claims) else {
                return Ok(None);
            };
            self.claims.asked.store(false, Ordering::SeqCst);
            let pass = self.claim_pass(wait, logged, &mut count).await;
            drop(running);
            if pass.is_err() || !self.claims.asked.load(Ordering::SeqCst) {
                return pass.map(|()| Some(count));
            }
        }
    }

    /// One pass of `claim`, from the first id, adding to `count` what it hands over.
    async fn claim_pass(
        &self,
        wait: bool,
        logged: Option<&str>,
        count: &mut usize,
    ) -> Result<(), StoreError> {
        let mut after_id = 0;
        loop {
            let room = self.backlog.free().min(CLAIM_BATCH.unsigned_abs());
            if room == 0 {
                // A full backlog says nothing of the database: ask it. If it cannot
                // answer, the next look finds out.
                let waiting = self.store.any_claimable(0).await.unwrap_or(true);
                self.backlog.set_earlier_waiting(waiting);
                if !wait || !waiting {
                    return Ok(());
                }
                // A second at most: the database is asked again even if no slot comes
                // back (another instance may have claimed what was left).
                let _ = tokio::time::timeout(ROOM_WAIT, self.backlog.room_given_back()).await;
                continue;
            }
            let limit = i64::try_from(room).unwrap_or(CLAIM_BATCH);
            let from = after_id;
            let queued = self.store.claim_queued(limit, from).await?;
            let taken = queued.len() as u64;
            self.backlog.add(taken);
            *count += queued.len();
            if let (Some(what), false) = (logged, queued.is_empty()) {
                info!(self.log, "{}", what; "count" => queued.len());
            }
            for message in queued {
                after_id = message.id;
                self.route(message, Slot::Counted).await;
            }
            if taken < room {
                if from > 0 {
                    after_id = 0;
                    continue;
                }
                self.backlog.set_earlier_waiting(false);
                return Ok(());
            }
        }
    }

    /// `claim` after start-up, each batch it takes logged under `what`.
    async fn claim_logged(self, wait: bool, what: &'static str) {
        if let Err(e) = self.claim(wait, Some(what)).await {
            warn!(self.log, "could not claim queued messages"; "error" => e.to_string());
        }
    }

    /// Hands a queued message to its provider, or fails it for good when it cannot be
    /// routed, so that it is never picked up again.
    async fn route_queued(&self, queued: QueuedMessage) {
        self.route(queued, Slot::Take).await;
    }

    /// `route_queued` with the message's backlog slot either already counted (given back
    /// if it cannot be routed) or taken here.
    async fn route(&self, queued: QueuedMessage, slot: Slot) {
        let id = queued.id;
        let unroutable = || {
            if slot == Slot::Counted {
                self.backlog.release();
            }
        };
        let Some(channel) = Channel::parse(&queued.channel) else {
            error!(self.log, "invalid routing"; "channel" => &queued.channel, "message_id" => id);
            self.metrics.invalid_routing.inc();
            unroutable();
            self.fail(id).await;
            return;
        };
        let provider = queued.provider.as_ref().and_then(|p| self.providers.get(p));
        let Some(provider) = provider else {
            error!(self.log, "no provider for channel";
                "channel" => channel.as_str(), "message_id" => id);
            self.metrics
                .routing_missing_provider
                .with_label_values(&[channel.as_str()])
                .inc();
            unroutable();
            self.fail(id).await;
            return;
        };
        if slot == Slot::Take {
            self.backlog.add(1);
        }
        // Bounded by the backlog: every message in a provider's mailbox holds a slot.
        provider.do_send(Dispatch {
            message_id: id,
            channel,
            attempts_made: queued.attempts_made,
            due: queued.next_attempt_at,
            sender: sender_key(&queued.from),
            retry_base: queued.retry_base,
        });
    }

    async fn fail(&self, id: i64) {
        if let Err(e) = self.store.mark_failed(id).await {
            // Left queued; the next start meets it again and fails it then.
            warn!(self.log, "could not mark message failed"; "message_id" => id,
                "error" => e.to_string());
        }
    }
}

/// Whose is the backlog slot of a message being routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Counted by a claim within the limit.
    Counted,
    /// To be taken, even beyond the limit: the message was accepted before.
    Take,
}

/// Cloning a router makes a twin over the same registry, providers, store and backlog:
/// what one accepts, the other would have accepted the same way. The binary starts one on
/// each HTTP worker's thread, so that accepting a message crosses no thread on its way in
/// or back (the mailbox and the store's answer reach the worker directly).
#[derive(Clone)]
pub struct RouterActor {
    registry: Registry,
    routes: Routes,
}

/// The running providers by name, as start-up made them (`provider::start_all`).
pub type Providers = Arc<BTreeMap<String, Addr<ProviderActor>>>;

impl RouterActor {
    /// Starts the router on an arbiter of its own, so that recovery and the sweep's
    /// messages never wait behind a busy thread (new messages go to the HTTP workers'
    /// twins of it).
    pub fn start(
        registry: Registry,
        providers: Providers,
        store: Store,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        log: Logger,
    ) -> Addr<RouterActor> {
        RouterActor::new(registry, providers, store, metrics, backlog, log).start_on_own_arbiter()
    }

    /// This router, started on an arbiter of its own.
    pub fn start_on_own_arbiter(self) -> Addr<RouterActor> {
        RouterActor::start_in_arbiter(&Arbiter::new().handle(), move |_| self)
    }

    pub fn new(
        registry: Registry,
        providers: Providers,
        store: Store,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        log: Logger,
    ) -> Self {
        RouterActor {
            registry,
            routes: Routes {
                providers,
                store,
                metrics,
                backlog,
                claims: Arc::default(),
                log: log.new(slog::o!("actor" => "router")),
            },
        }
    }
}

thread_local! {
    /// What this thread accepted in the current turn of its loop and has not handed to
    /// the providers yet, by provider.
    static OUTGOING: RefCell<Vec<(Addr<ProviderActor>, Vec<Dispatch>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Hands an accepted message to its provider at the end of this turn of the thread's
/// loop, together with the others accepted in it. Why: one committed batch wakes tens of
/// requests on an HTTP worker at once, and a mailbox item each would wake the provider's
/// thread for each of them.
fn hand_over(provider: &Addr<ProviderActor>, dispatch: Dispatch) {
    let first = OUTGOING.with(|outgoing| {
        let mut outgoing = outgoing.borrow_mut();
        let first = outgoing.is_empty();
        match outgoing.iter_mut().find(|(addr, _)| addr == provider) {
            Some((_, dispatches)) => dispatches.push(dispatch),
            None => outgoing.push((provider.clone(), vec![dispatch])),
        }
        first
    });
    if first {
        actix::spawn(async {
            // Runs again once the tasks woken with this one have had their turn.
            tokio::task::yield_now().await;
            let outgoing = OUTGOING.with(|outgoing| std::mem::take(&mut *outgoing.borrow_mut()));
            for (provider, dispatches) in outgoing {
                provider.do_send(DispatchMany(dispatches));
            }
        });
    }
}

/// How many queued messages one claim takes at most, at start and in a sweep, so that
/// neither a start after a long outage nor an instance taking over from a dead one
/// holds everything in one transaction.
pub const CLAIM_BATCH: i64 = 1_000;

/// How long a claim waiting for room in the backlog waits before it looks again.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Actor for RouterActor {
    type Context = Context<Self>;
}

impl Handler<Ping> for RouterActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

impl Handler<AcceptOutbound> for RouterActor {
    type Result = ResponseFuture<Result<Accepted, RouteError>>;

    fn handle(&mut self, msg: AcceptOutbound, _: &mut Self::Context) -> Self::Result {
        let channel = msg.content.channel;
        let sender = sender_key(&msg.content.from);
        let provider = self.registry.provider_for(channel).map(str::to_owned);
        let routes = self.routes.clone();
        // A message with a provider takes a backlog slot before it is stored, so that a
        // flood is refused before it costs a write. Messages accepted earlier and waiting
        // in the database for room (a bulk retry, a dead instance's) are part of the
        // backlog too: while they wait, a new message is refused and they get the room.
        let earlier_wait = routes.backlog.earlier_waiting();
        if provider.is_some() && (earlier_wait || !routes.backlog.try_reserve()) {
            let pending = routes.backlog.pending();
            // A replay creates nothing, so it gets its first answer however full the
            // backlog is; only a new message is refused.
            return Box::pin(async move {
                let earlier = match msg.idempotency {
                    Some(key) => routes.store.find_by_idempotency_key(key).await?,
                    None => None,
                };
                match earlier {
                    Some(OutboundStored::Replayed {
                        id,
                        conversation_id,
                        channel,
                        provider: Some(provider),
                    }) => Ok(Accepted {
                        id,
                        conversation_id,
                        channel,
                        provider,
                        replayed: true,
                    }),
                    Some(OutboundStored::Conflict) => Err(RouteError::IdempotencyConflict),
                    _ => Err(RouteError::Overloaded { pending }),
                }
            });
        }
        Box::pin(async move {
            let send_at = msg.options.send_at.filter(|at| *at > Timestamp::now());
            let new = NewOutbound {
                content: msg.content,
                provider: provider.clone(),
                idempotency: msg.idempotency,
                lease: None,
                status_callback: msg.options.status_callback,
                send_at,
            };
            let stored = routes.store.insert_outbound(new).await;
            let handed_over = matches!(stored, Ok(OutboundStored::Created { .. }));
            if provider.is_some() && !handed_over {
                routes.backlog.release();
            }
            match stored? {
                OutboundStored::Created {
                    id,
                    conversation_id,
                } => match provider {
                    Some(provider) => {
                        routes
                            .metrics
                            .messages_accepted
                            .with_label_values(&[channel.as_str()])
                            .inc();
                        if let Some(addr) = routes.providers.get(&provider) {
                            hand_over(
                                addr,
                                Dispatch {
                                    message_id: id,
                                    channel,
                                    attempts_made: 0,
                                    due: send_at,
                                    sender,
                                    retry_base: 0,
                                },
                            );
                        }
                        Ok(Accepted {
                            id,
                            conversation_id,
                            channel: channel.as_str().to_owned(),
                            provider,
                            replayed: false,
                        })
                    }
                    None => {
                        error!(routes.log, "no provider for channel";
                            "channel" => channel.as_str(), "message_id" => id);
                        routes
                            .metrics
                            .routing_missing_provider
                            .with_label_values(&[channel.as_str()])
                            .inc();
                        Err(RouteError::NoProvider {
                            channel: channel.as_str().to_owned(),
                            message_id: id,
                        })
                    }
                },
                // A replay repeats the first answer; it logs and counts nothing new.
                OutboundStored::Replayed {
                    id,
                    conversation_id,
                    channel,
                    provider,
                } => match provider {
                    Some(provider) => Ok(Accepted {
                        id,
                        conversation_id,
                        channel,
                        provider,
                        replayed: true,
                    }),
                    None => Err(RouteError::NoProvider {
                        channel,
                        message_id: id,
                    }),
                },
                OutboundStored::Conflict => Err(RouteError::IdempotencyConflict),
            }
        })
    }
}

impl Handler<RouteQueued> for RouterActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, RouteQueued(queued): RouteQueued, _: &mut Self::Context) -> Self::Result {
        let routes = self.routes.clone();
        Box::pin(async move { routes.route_queued(queued).await })
    }
}

impl Handler<ResumeQueued> for RouterActor {
    type Result = ResponseFuture<Result<usize, StoreError>>;

    fn handle(&mut self, _: ResumeQueued, _: &mut Self::Context) -> Self::Result {
        let routes = self.routes.clone();
        Box::pin(async move {
            routes.store.forget_earlier_leases().await?;
            Ok(routes.claim(false, None).await?.unwrap_or(0))
        })
    }
}

impl Handler<ClaimQueued> for RouterActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ClaimQueued, _: &mut Self::Context) -> Self::Result {
        let routes = self.routes.clone();
        match msg {
            ClaimQueued::Sweep => Box::pin(routes.claim_logged(false, "claimed lapsed messages")),
            // The claim that waits for room (one at a time, like every claim).
            ClaimQueued::IfWaitingForRoom => {
                let wanted = routes.backlog.earlier_waiting() && routes.backlog.has_room();
                if !wanted {
                    return Box::pin(async {});
                }
                Box::pin(routes.claim_logged(true, "claimed queued messages"))
            }
        }
    }
}

impl Handler<RequeueFailed> for RouterActor {
    type Result = ResponseFuture<Result<Requeued, StoreError>>;

    fn handle(
        &mut self,
        RequeueFailed(target): RequeueFailed,
        _: &mut Self::Context,
    ) -> Self::Result {
        let routes = self.routes.clone();
        let bulk = matches!(target, RequeueTarget::Provider { .. });
        Box::pin(async move {
            let requeued = routes.store.requeue(target).await;
            match &requeued {
                Ok(Requeued::Messages(messages)) => {
                    for message in messages.clone() {
                        routes.route_queued(message).await;
                    }
                }
                // Claimed meanwhile, not awaited: the operator's answer need not wait
                // for the backlog to have room for all of them. After an error too: the
                // steps before it stand.
                Ok(Requeued::Many(0)) => {}
                Ok(Requeued::Many(_)) | Err(_) if bulk => {
                    actix::spawn(
                        routes
                            .clone()
                            .claim_logged(false, "claimed queued messages"),
                    );
                }
                _ => {}
            }
            requeued
        })
    }
}

impl Handler<OverrideBreaker> for RouterActor {
    type Result = ResponseFuture<Option<ProviderStatus>>;

    fn handle(&mut self, msg: OverrideBreaker, _: &mut Self::Context) -> Self::Result {
        let provider = self.routes.providers.get(&msg.provider).cloned();
        Box::pin(async move {
            let force = ForceBreaker {
                to: msg.to,
                stamp: msg.stamp,
            };
            provider?.send(force).await.ok()
        })
    }
}

impl Handler<ListProviders> for RouterActor {
    type Result = ResponseFuture<Vec<ProviderStatus>>;

    fn handle(&mut self, _: ListProviders, _: &mut Self::Context) -> Self::Result {
        let providers = self.routes.providers.clone();
        Box::pin(async move {
            let mut statuses = Vec::with_capacity(providers.len());
            for addr in providers.values() {
                if let Ok(status) = addr.send(GetProviderStatus).await {
                    statuses.push(status);
                }
            }
            statuses
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(email_route: &str) -> Registry {
        Registry::new(
            [
                (Channel::Sms, "sms-mms".to_owned()),
                (Channel::Mms, "sms-mms".to_owned()),
                (Channel::Email, email_route.to_owned()),
            ],
            vec!["sms-mms".to_owned(), "email".to_owned()],
        )
    }

    #[test]
    fn channels_route_to_their_dedicated_provider() {
        let r = registry("email");
        assert_eq!(r.provider_for(Channel::Sms), Some("sms-mms"));
        assert_eq!(r.provider_for(Channel::Mms), Some("sms-mms"));
        assert_eq!(r.provider_for(Channel::Email), Some("email"));
        assert!(r.unserved().is_empty());
        assert_eq!(
            r.providers(),
            vec![
                ("email".to_owned(), vec![Channel::Email]),
                ("sms-mms".to_owned(), vec![Channel::Sms, Channel::Mms]),
            ]
        );
    }

    #[test]
    fn a_route_to_an_undefined_or_empty_provider_has_no_provider() {
        for route in ["", "postmark"] {
            let r = registry(route);
            assert_eq!(r.provider_for(Channel::Email), None);
            assert_eq!(r.unserved(), vec![(Channel::Email, route.to_owned())]);
            assert_eq!(r.providers()[0], ("email".to_owned(), vec![]));
        }
    }
}
