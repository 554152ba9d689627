//! Routing: the registry (channel -> provider name, from `[routing]`) and the
//! `RouterActor`, which accepts outbound messages: it tags each with its provider, has it
//! stored, and answers. A channel whose provider is missing is answered at once with
//! `RouteError::NoProvider`, the message stored `failed` so nothing retries it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use slog::{error, Logger};
use thiserror::Error;

use crate::domain::{Channel, IdempotencyKey, MessageContent};
use crate::metrics::Metrics;
use crate::store::{NewOutbound, OutboundStored, Store, StoreError};

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

/// Answers when the router runs; readiness asks it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

pub struct RouterActor {
    registry: Registry,
    store: Store,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl RouterActor {
    pub fn new(registry: Registry, store: Store, metrics: Arc<Metrics>, log: Logger) -> Self {
        RouterActor {
            registry,
            store,
            metrics,
            log: log.new(slog::o!("actor" => "router")),
        }
    }
}

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
        let provider = self.registry.provider_for(channel).map(str::to_owned);
        let (store, metrics, log) = (self.store.clone(), self.metrics.clone(), self.log.clone());
        Box::pin(async move {
            let new = NewOutbound {
                content: msg.content,
                provider: provider.clone(),
                idempotency: msg.idempotency,
            };
            match store.insert_outbound(new).await? {
                OutboundStored::Created {
                    id,
                    conversation_id,
                } => match provider {
                    Some(provider) => {
                        metrics
                            .messages_accepted
                            .with_label_values(&[channel.as_str()])
                            .inc();
                        Ok(Accepted {
                            id,
                            conversation_id,
                            channel: channel.as_str().to_owned(),
                            provider,
                            replayed: false,
                        })
                    }
                    None => {
                        error!(log, "no provider for channel";
                            "channel" => channel.as_str(), "message_id" => id);
                        metrics
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
