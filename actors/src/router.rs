//! Routing: the registry (channel -> provider name, from `[routing]`), the backlog bound,
//! and the `RouterActor`. The router accepts outbound messages (tags each with its
//! provider, has it stored, hands it to that provider's actor, answers) and routes the
//! queued messages recovery finds. A channel whose provider is missing is answered at once
//! with `RouteError::NoProvider`, the message stored `failed` so nothing retries it; a
//! stored message with an unknown channel is an invalid route, failed the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{
    Actor, Addr, Arbiter, AsyncContext, Context, Handler, Message, ResponseFuture, Supervisor,
};
use slog::{error, info, warn, Logger};
use thiserror::Error;

use crate::domain::{Channel, IdempotencyKey, MessageContent};
use crate::metrics::Metrics;
use crate::provider::{Dispatch, GetProviderStatus, ProviderActor, ProviderConfig, ProviderStatus};
use crate::store::{NewOutbound, OutboundStored, QueuedMessage, Store, StoreError};

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
}

/// A dispatch event for a stored, queued message (recovery hands every one over this
/// way). Its channel is raw: an unknown one is an invalid route.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RouteQueued(pub QueuedMessage);

/// Hands every queued outbound message in the database to its provider, in id order.
/// Answers how many were handed over.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct ResumeQueued;

/// Every provider's status, by name.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ProviderStatus>")]
pub struct ListProviders;

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
    log: Logger,
}

impl Routes {
    /// Hands a queued message to its provider, or fails it for good when it cannot be
    /// routed, so that it is never picked up again.
    async fn route_queued(&self, queued: QueuedMessage) {
        let id = queued.id;
        let Some(channel) = Channel::parse(&queued.channel) else {
            error!(self.log, "invalid routing"; "channel" => &queued.channel, "message_id" => id);
            self.metrics.invalid_routing.inc();
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
            self.fail(id).await;
            return;
        };
        self.backlog.add(1);
        // Bounded by the backlog: every message in a provider's mailbox holds a slot.
        provider.do_send(Dispatch {
            message_id: id,
            channel,
            attempts_made: queued.attempts_made,
            due: queued.next_attempt_at,
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

pub struct RouterActor {
    registry: Registry,
    routes: Routes,
}

impl RouterActor {
    /// Starts the router on an arbiter of its own (every request passes through it, so it
    /// must not share a thread with anything busy) with its providers.
    pub fn start(
        registry: Registry,
        providers: Vec<ProviderConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        log: Logger,
    ) -> Addr<RouterActor> {
        let router = RouterActor::new(registry, providers, store, metrics, backlog, log);
        RouterActor::start_in_arbiter(&Arbiter::new().handle(), move |_| router)
    }

    /// Starts one `ProviderActor` per configured provider, each under a `Supervisor` on an
    /// arbiter (thread) of its own, so that no provider's work can delay another's and a
    /// provider that fails is restarted. Must run inside an actix system.
    pub fn new(
        registry: Registry,
        providers: Vec<ProviderConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        log: Logger,
    ) -> Self {
        let addrs = providers
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
            .collect();
        RouterActor {
            registry,
            routes: Routes {
                providers: Arc::new(addrs),
                store,
                metrics,
                backlog,
                log: log.new(slog::o!("actor" => "router")),
            },
        }
    }
}

/// How many queued messages a start claims at most (beyond the backlog limit on purpose:
/// all of them were accepted before, and none may be left behind).
const RECOVERY_CLAIM: i64 = i64::MAX;
/// How many lapsed messages one sweep claims at most, so that one instance taking over
/// from a dead one does not swallow everything in one transaction.
const SWEEP_CLAIM: i64 = 1_000;

impl Actor for RouterActor {
    type Context = Context<Self>;

    /// With a shared database, renews this instance's leases three times per lease and
    /// sweeps for lapsed ones (work of an instance that died) twice per lease.
    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.routes.store.shares_work() {
            return;
        }
        let lease = self.routes.store.lease_duration();
        ctx.run_interval(lease / 3, |router, _| {
            let (store, log) = (router.routes.store.clone(), router.routes.log.clone());
            actix::spawn(async move {
                if let Err(e) = store.renew_leases().await {
                    warn!(log, "could not renew leases"; "error" => e.to_string());
                }
            });
        });
        ctx.run_interval(lease / 2, |router, _| {
            let routes = router.routes.clone();
            actix::spawn(async move {
                match routes.store.claim_queued(SWEEP_CLAIM).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            info!(routes.log, "claimed lapsed messages"; "count" => claimed.len());
                        }
                        for message in claimed {
                            routes.route_queued(message).await;
                        }
                    }
                    Err(e) => warn!(routes.log, "could not claim lapsed messages";
                        "error" => e.to_string()),
                }
            });
        });
    }
}

impl Handler<Ping> for RouterActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

impl Handler<AcceptOutbound> for RouterActor {
    type Result = ResponseFuture<Result<Accepted, RouteError>>;

    fn handle(&mut self, msg: AcceptOutbound, _: &mut Self::Context) -> Self::Result {
        let channel = msg.content.channel;
        let provider = self.registry.provider_for(channel).map(str::to_owned);
        let routes = self.routes.clone();
        // A message with a provider takes a backlog slot before it is stored, so that a
        // flood is refused before it costs a write.
        if provider.is_some() && !routes.backlog.try_reserve() {
            let pending = routes.backlog.pending();
            return Box::pin(async move { Err(RouteError::Overloaded { pending }) });
        }
        Box::pin(async move {
            let new = NewOutbound {
                content: msg.content,
                provider: provider.clone(),
                idempotency: msg.idempotency,
                lease: None,
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
                            addr.do_send(Dispatch {
                                message_id: id,
                                channel,
                                attempts_made: 0,
                                due: None,
                            });
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
            let queued = routes.store.claim_queued(RECOVERY_CLAIM).await?;
            let count = queued.len();
            for message in queued {
                routes.route_queued(message).await;
            }
            Ok(count)
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
