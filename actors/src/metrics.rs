//! Every Prometheus series of the contract (section 5), and the service's own (callbacks,
//! the backlog), owned by one `Metrics` value with its own `Registry`: no global statics,
//! so test servers in one process never share counters. The HTTP layer registers its two
//! series on the same registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::admission::Backlog;
use crate::domain::Channel;

/// Outcome labels, in the order the contract lists them.
pub const OUTCOMES: [&str; 5] = ["success", "rate_limited", "error", "timeout", "rejected"];
/// Breaker state labels.
pub const BREAKER_STATES: [&str; 5] = ["closed", "open", "half_open", "forced_open", "disabled"];

/// Buckets from 1 ms to 10 s: provider latency is simulated anywhere in that range.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub dispatch_attempts: IntCounterVec,
    pub dispatch_outcomes: IntCounterVec,
    pub dispatch_duration: HistogramVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub breaker_rejections: IntCounterVec,
    pub messages_accepted: IntCounterVec,
    pub messages_failed: IntCounterVec,
    pub webhooks_received: IntCounterVec,
    pub invalid_routing: IntCounter,
    pub routing_missing_provider: IntCounterVec,
    pub pending_messages: IntGaugeVec,
    /// Status callbacks tried, by outcome (`delivered`, `retried`, `given_up`).
    pub callbacks: IntCounterVec,
    /// Status callbacks not yet delivered nor given up.
    pub callbacks_pending: IntGauge,
    /// Set from the backlog at each scrape (`observe_backlog`).
    backlog_slots: IntGauge,
    backlog_earlier_waiting: IntGauge,
}

/// Callback outcome labels.
pub const CALLBACK_OUTCOMES: [&str; 3] = ["delivered", "retried", "given_up"];

impl Metrics {
    /// Builds every series. `providers` pairs each configured provider with the channels
    /// routed to it, so that its series exist at zero before the first message.
    pub fn new(providers: &[(String, Vec<Channel>)]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };

        let dispatch_attempts = counter(
            "messaging_dispatch_attempts_total",
            "Dispatch attempts made by each provider.",
            &["provider", "channel"],
        )?;
        let dispatch_outcomes = counter(
            "messaging_dispatch_outcomes_total",
            "Dispatch attempt outcomes by provider and kind.",
            &["provider", "channel", "outcome"],
        )?;
        let dispatch_duration = HistogramVec::new(
            HistogramOpts::new(
                "messaging_dispatch_duration_seconds",
                "Simulated provider time of each dispatch attempt.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider"],
        )?;
        registry.register(Box::new(dispatch_duration.clone()))?;
        let breaker_state = gauge(
            "messaging_breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            &["provider", "state"],
        )?;
        let breaker_transitions = counter(
            "messaging_breaker_transitions_total",
            "Breaker state changes.",
            &["provider", "from", "to"],
        )?;
        let breaker_rejections = counter(
            "messaging_breaker_rejections_total",
            "Attempts held back because the provider's breaker was open.",
            &["provider"],
        )?;
        let messages_accepted = counter(
            "messaging_messages_accepted_total",
            "Outbound messages accepted (202) and stored.",
            &["channel"],
        )?;
        let messages_failed = counter(
            "messaging_messages_failed_total",
            "Outbound messages that ended failed.",
            &["provider", "channel"],
        )?;
        let webhooks_received = counter(
            "messaging_webhooks_received_total",
            "Inbound messages stored from provider webhooks (repeats not counted).",
            &["channel"],
        )?;
        let invalid_routing = IntCounter::new(
            "messaging_invalid_routing_total",
            "Dispatch events skipped because their channel is unknown.",
        )?;
        registry.register(Box::new(invalid_routing.clone()))?;
        let routing_missing_provider = counter(
            "messaging_routing_missing_provider_total",
            "Outbound messages refused because no provider serves their channel.",
            &["channel"],
        )?;
        let pending_messages = gauge(
            "messaging_pending_messages",
            "Messages queued for a provider and not yet finished.",
            &["provider"],
        )?;

        let callbacks = counter(
            "messaging_callbacks_total",
            "Status callback tries, by outcome.",
            &["outcome"],
        )?;
        let callbacks_pending = IntGauge::new(
            "messaging_callbacks_pending",
            "Status callbacks waiting to be delivered.",
        )?;
        registry.register(Box::new(callbacks_pending.clone()))?;
        let backlog_slots = IntGauge::new(
            "messaging_backlog_slots",
            "Backlog slots taken against dispatch.backlog_limit: messages accepted and not \
             finished, a finished one until its last record is written.",
        )?;
        registry.register(Box::new(backlog_slots.clone()))?;
        let backlog_earlier_waiting = IntGauge::new(
            "messaging_backlog_waiting_in_database",
            "1 while messages accepted earlier wait in the database for backlog room (new \
             messages get 503 overloaded meanwhile), else 0.",
        )?;
        registry.register(Box::new(backlog_earlier_waiting.clone()))?;
        for outcome in CALLBACK_OUTCOMES {
            callbacks.with_label_values(&[outcome]);
        }

        let metrics = Metrics {
            registry,
            dispatch_attempts,
            dispatch_outcomes,
            dispatch_duration,
            breaker_state,
            breaker_transitions,
            breaker_rejections,
            messages_accepted,
            messages_failed,
            webhooks_received,
            invalid_routing,
            routing_missing_provider,
            pending_messages,
            callbacks,
            callbacks_pending,
            backlog_slots,
            backlog_earlier_waiting,
        };
        metrics.touch_all(providers);
        Ok(metrics)
    }

    /// Creates every labelled series at zero so dashboards and alerts see them at start.
    fn touch_all(&self, providers: &[(String, Vec<Channel>)]) {
        for channel in Channel::ALL {
            let c = channel.as_str();
            self.messages_accepted.with_label_values(&[c]);
            self.webhooks_received.with_label_values(&[c]);
            self.routing_missing_provider.with_label_values(&[c]);
        }
        for (provider, channels) in providers {
            let p = provider.as_str();
            for channel in channels {
                let c = channel.as_str();
                self.dispatch_attempts.with_label_values(&[p, c]);
                self.messages_failed.with_label_values(&[p, c]);
                for outcome in OUTCOMES {
                    self.dispatch_outcomes.with_label_values(&[p, c, outcome]);
                }
            }
            self.dispatch_duration.with_label_values(&[p]);
            self.breaker_rejections.with_label_values(&[p]);
            self.pending_messages.with_label_values(&[p]);
            for state in BREAKER_STATES {
                let value = i64::from(state == "closed");
                self.breaker_state.with_label_values(&[p, state]).set(value);
                for to in BREAKER_STATES {
                    if to != state {
                        self.breaker_transitions.with_label_values(&[p, state, to]);
                    }
                }
            }
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the backlog's state into its two gauges, at a scrape: the backlog is an
    /// atomic counter the hot path keeps, and a gauge set there would cost every message.
    pub fn observe_backlog(&self, backlog: &Backlog) {
        self.backlog_slots
            .set(i64::try_from(backlog.pending()).unwrap_or(i64::MAX));
        self.backlog_earlier_waiting
            .set(i64::from(backlog.earlier_waiting()));
    }

    /// The text exposition format Prometheus scrapes.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_series_exists_at_zero_from_the_start() {
        let metrics = Metrics::new(&[
            ("sms-mms".to_owned(), vec![Channel::Sms, Channel::Mms]),
            ("email".to_owned(), vec![Channel::Email]),
        ])
        .expect("metrics build");
        let text = metrics.encode().expect("encode");
        for line in [
            r#"messaging_dispatch_attempts_total{channel="mms",provider="sms-mms"} 0"#,
            r#"messaging_dispatch_outcomes_total{channel="email",outcome="timeout",provider="email"} 0"#,
            r#"messaging_breaker_state{provider="email",state="closed"} 1"#,
            r#"messaging_breaker_state{provider="email",state="open"} 0"#,
            r#"messaging_breaker_transitions_total{from="open",provider="sms-mms",to="half_open"} 0"#,
            r#"messaging_pending_messages{provider="sms-mms"} 0"#,
            r#"messaging_messages_accepted_total{channel="sms"} 0"#,
            r#"messaging_routing_missing_provider_total{channel="email"} 0"#,
            "messaging_invalid_routing_total 0",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }
}
