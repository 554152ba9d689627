//! Start-up: opens the database (migrations included), starts the actors, binds the HTTP
//! server, logs the real bound address, and stops gracefully on SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor as _, Addr};
use actix_web::{web, App};
use anyhow::Context as _;
use messaging_actors::admission::Backlog;
use messaging_actors::breaker::BreakerConfig;
use messaging_actors::callbacks::{CallbackConfig, CallbackWorker, StopCallbacks};
use messaging_actors::domain::Channel;
use messaging_actors::leases::LeaseKeeper;
use messaging_actors::metrics::Metrics;
use messaging_actors::outcome::{OutcomeOdds, RetryPolicy};
use messaging_actors::provider::{self, ProviderConfig};
use messaging_actors::router::{Registry, ResumeQueued, RouterActor};
use messaging_actors::store::{self, Store};
use slog::{info, warn, Logger};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::http::{self, AppState, HttpMetrics};
use crate::http::{Auth, WebhookKeys};
use crate::settings::{ProviderKind, ProviderSettings, Settings, SENDGRID_EVENT_BATCH_BYTES};
use messaging_actors::senders::{Api, HttpSender};

/// How long in-flight requests get to finish after a stop signal: 8 s, leaving room for
/// handing leases back and flushing the log within the 10 s the README promises (a client
/// stalled mid-body would otherwise hold the stop for the whole body deadline).
const SHUTDOWN_TIMEOUT_SECS: u64 = 8;
/// How long a graceful stop waits for the real providers' requests under way and the
/// records on their way (a simulated attempt is abandoned: nothing was sent), and for the
/// callback tries under way.
const STOP_DRAIN: Duration = Duration::from_secs(5);
/// That wait ends this long after the signal at the latest, whatever the requests in
/// flight took of it, so that the stop stays within the README's 10 s.
const STOP_BUDGET: Duration = Duration::from_secs(9);

fn registry(settings: &Settings) -> Registry {
    let routing = &settings.routing;
    Registry::new(
        [
            (Channel::Sms, routing.sms.clone()),
            (Channel::Mms, routing.mms.clone()),
            (Channel::Email, routing.email.clone()),
        ],
        settings.providers.keys().cloned().collect(),
    )
}

/// A real provider's sender, from its settings (the secret was read at load).
fn http_sender(provider: &ProviderSettings) -> anyhow::Result<Option<Arc<HttpSender>>> {
    let secret = || {
        provider
            .secret
            .clone()
            .context("a real provider's secret was not read")
    };
    let api = match provider.kind {
        ProviderKind::Simulated => return Ok(None),
        ProviderKind::Twilio => Api::Twilio {
            account_sid: provider.real.account_sid.clone().unwrap_or_default(),
            auth_token: secret()?,
            status_callback: provider.real.status_callback_url.clone(),
        },
        ProviderKind::Sendgrid => Api::SendGrid {
            api_key: secret()?,
            default_subject: provider.real.default_subject.clone(),
        },
    };
    let timeout = Duration::from_millis(provider.real.request_timeout_ms);
    let sender = HttpSender::new(api, provider.base_url(), timeout)
        .context("building the provider's HTTP client")?;
    Ok(Some(Arc::new(sender)))
}

/// What verifies the real providers' webhooks.
fn webhook_keys(settings: &Settings) -> WebhookKeys {
    let providers = settings.providers.values();
    WebhookKeys {
        public_url: settings.server.public_url.clone(),
        twilio_tokens: providers
            .clone()
            .filter(|p| p.kind == ProviderKind::Twilio)
            .filter_map(|p| p.secret.clone())
            .collect(),
        sendgrid_keys: providers
            .filter_map(|p| p.real.event_webhook_public_key.as_deref())
            .filter_map(http::sendgrid_public_key)
            .collect(),
    }
}

/// Each `[providers.NAME]` with its settings resolved over the global defaults.
fn provider_configs(
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<Vec<ProviderConfig>> {
    let d = &settings.dispatch;
    let retry = RetryPolicy {
        max_attempts: d.max_attempts,
        backoff_initial: Duration::from_millis(d.backoff_initial_ms),
        backoff_max: Duration::from_millis(d.backoff_max_ms),
        retry_after: Duration::from_millis(d.retry_after_ms),
    };
    registry
        .providers()
        .into_iter()
        .filter_map(|(name, channels)| {
            let provider = settings.providers.get(&name)?;
            let (outcomes, breaker) = (&provider.outcomes, &provider.breaker);
            let sender = match http_sender(provider) {
                Ok(sender) => sender,
                Err(e) => return Some(Err(e.context(format!("provider {name}")))),
            };
            Some(Ok(ProviderConfig {
                breaker: BreakerConfig {
                    window_size: breaker.window_size,
                    minimum_calls: breaker.minimum_calls,
                    failure_rate_threshold: breaker.failure_rate_threshold,
                    open: Duration::from_millis(breaker.open_ms),
                    half_open_calls: breaker.half_open_calls,
                },
                seed: provider.seed,
                odds: OutcomeOdds {
                    timeout_pct: outcomes.timeout_pct,
                    error_pct: outcomes.error_pct,
                    ratelimit_pct: outcomes.ratelimit_pct,
                },
                latency: Duration::from_millis(outcomes.latency_ms),
                timeout: Duration::from_millis(outcomes.timeout_ms),
                retry,
                sender,
                max_in_flight: provider.real.max_in_flight as usize,
                sender_interval: Duration::from_millis(provider.real.sender_interval_ms),
                name,
                channels,
            }))
        })
        .collect()
}

/// Runs the service until a stop signal; must be called inside an actix `System`.
pub async fn run(settings: Settings, log: Logger) -> anyhow::Result<()> {
    // Caught from here on: a signal during start-up (a long migration, the wait for
    // another instance's migration lock, the resume) is kept for when the service runs,
    // which then stops at once, gracefully; uncaught, it killed the process (exit 143).
    let signals = StopSignals::listen();
    let _one_process = lock_sqlite_file(&settings.database.url)?;
    raise_open_file_limit(&log);
    let timeout = Duration::from_millis(settings.database.timeout_ms);
    let pool = store::open(
        &settings.database.url,
        settings.database.pool_size,
        settings.database.writers(),
        timeout,
    )
    .map_err(|e| anyhow::anyhow!(settings.database.without_secrets(&e.to_string())))
    .with_context(|| format!("opening database {}", settings.database.url_for_logs()))?;
    let registry = registry(&settings);
    for (channel, provider) in registry.unserved() {
        warn!(log, "channel has no provider";
            "channel" => channel.as_str(), "provider" => provider);
    }
    for (provider, channels) in registry.providers() {
        if channels.is_empty() {
            // Most likely a misspelt table, or one the environment named in lower case.
            warn!(log, "provider serves no channel"; "provider" => provider,
                "why" => "no [routing] key names it; environment overrides name tables in lower case");
        }
    }
    if settings.any_real_provider() {
        // So that nobody believes a simulated provider has sent anything.
        for (provider, channels) in registry.providers() {
            let simulated = settings
                .providers
                .get(&provider)
                .is_some_and(|p| p.kind == ProviderKind::Simulated);
            for channel in channels.into_iter().filter(|_| simulated) {
                warn!(log, "channel served by a simulator";
                    "channel" => channel.as_str(), "provider" => &provider);
            }
        }
    }
    if let Some(provider) = settings.sendgrid_batches_too_large() {
        warn!(log, "body limit below sendgrid's batches";
            "provider" => provider, "max_body_bytes" => settings.server.max_body_bytes,
            "advised" => SENDGRID_EVENT_BATCH_BYTES);
    }
    let twilio = settings
        .providers
        .values()
        .any(|p| p.kind == ProviderKind::Twilio);
    if twilio && settings.server.public_url.is_none() {
        warn!(log, "twilio signatures checked against each request's own url";
            "why" => "server.public_url is not set: behind a proxy that rewrites the scheme or host without X-Forwarded-* headers, set it");
    }
    let metrics = Arc::new(Metrics::new(&registry.providers()).context("building metrics")?);
    let http_metrics = HttpMetrics::new(metrics.registry()).context("building HTTP metrics")?;
    let auth =
        Arc::new(Auth::new(&settings, metrics.registry()).context("building access control")?);
    if auth.is_open() {
        warn!(log, "api is open"; "why" => "no [auth.keys] configured: anyone who reaches the port may send and read");
    } else if !auth.webhooks_are_signed() {
        warn!(log, "webhooks are open"; "why" => "API keys are configured but [webhooks] secret_env is not");
    }
    let store = Store::start(
        pool,
        settings.database.pool_size as usize,
        Duration::from_millis(settings.dispatch.lease_ms),
        timeout,
    );
    if let Err(e) = store.sync_clock().await {
        warn!(log, "could not read the database clock"; "error" => e.to_string());
    }
    let backlog = Arc::new(Backlog::new(settings.dispatch.backlog_limit));
    let providers = Arc::new(provider::start_all(
        provider_configs(&settings, &registry)?,
        &store,
        &metrics,
        &backlog,
        &log,
    ));
    let router_twin = RouterActor::new(
        registry,
        providers.clone(),
        store.clone(),
        metrics.clone(),
        backlog.clone(),
        log.clone(),
    );
    let router = router_twin.clone().start_on_own_arbiter();
    // Queued work from an earlier run goes to the providers before any new message, so
    // each provider meets it first.
    if store.shares_work() {
        info!(log, "sharing work";
            "instance" => store.instance(), "writers" => store.writers());
    }
    // Operators' breaker settings hold across a restart and on every instance.
    LeaseKeeper::sync_breakers(&store, &providers, &log).await;
    let resumed = router
        .send(ResumeQueued)
        .await
        .context("resuming queued messages")?
        .context("loading queued messages")?;
    info!(log, "resumed queued messages"; "count" => resumed);
    let stopping_providers = providers.clone();
    LeaseKeeper::new(store.clone(), providers, router.clone(), &log).start();
    let callbacks = CallbackConfig {
        secret: settings.callbacks.secret.clone(),
        max_age: Duration::from_millis(settings.callbacks.max_age_ms),
        request_timeout: Duration::from_millis(settings.callbacks.request_timeout_ms),
        max_in_flight: 64,
    };
    let callback_worker = CallbackWorker::new(store.clone(), metrics.clone(), callbacks, &log)
        .context("building the callback client")?
        .start();

    let state = web::Data::new(AppState {
        router,
        store: store.clone(),
        metrics,
        http_metrics,
        backlog,
        max_body_bytes: settings.server.max_body_bytes,
        webhook_keys: webhook_keys(&settings),
        auth: auth.clone(),
        default_callback: settings.callbacks.url.clone(),
        read_budget: Default::default(),
        log: log.clone(),
    });
    let server_settings = http::ServerSettings {
        addr: first_address(&settings.server.bind)?,
        request_head_timeout: Duration::from_secs(5),
        shutdown_timeout_secs: SHUTDOWN_TIMEOUT_SECS,
    };
    let (addr, server) = http::bind(&server_settings, move || {
        use actix::Actor as _;
        // The factory runs on each worker's thread: its twin of the router accepts that
        // worker's messages without a hop to the router's arbiter and back (context
        // switches were a fifth of the workers' samples in perf at 64 connections). An
        // accept still under way when a stop outlasts the grace period ends with its
        // worker: its write is queued by then and commits, the message stays queued under
        // this instance's lease, and `release_leases` below hands it back for the next start.
        let accepting = http::WorkerRouter(router_twin.clone().start());
        App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(accepting))
            .configure(http::routes)
            // The last wrapped runs first: the key is checked before anything else about
            // the request, so a caller without one is refused (and counted) as such.
            .wrap(actix_web::middleware::from_fn(http::require_json_accept))
            .wrap(actix_web::middleware::from_fn(http::authenticate))
            .wrap(actix_web::middleware::from_fn(http::observe))
    })
    .with_context(|| format!("binding {}", settings.server.bind))?;
    info!(log, "listening"; "addr" => addr.to_string());
    let handle = server.handle();
    let signal_log = log.clone();
    let stop_began = Arc::new(std::sync::OnceLock::new());
    let (began, stopping_callbacks) = (stop_began.clone(), callback_worker.clone());
    actix_web::rt::spawn(async move {
        let signal = signals.next().await;
        let _ = began.set(tokio::time::Instant::now());
        info!(signal_log, "stopping"; "signal" => signal);
        // No callback try starts from here: those under way drain beside the requests.
        stopping_callbacks.do_send(StopCallbacks);
        // Graceful: stop accepting, let in-flight requests finish (their writes commit).
        handle.stop(true).await;
    });
    server.await.context("running the HTTP server")?;
    // Attempts and callback tries under way finish and are recorded, so that nothing is
    // sent twice after a graceful stop; then queued work this instance leased goes back at
    // once, not after its lease lapses, but for what is still under way.
    let now = tokio::time::Instant::now();
    let deadline = stop_began.get().map_or(now + STOP_DRAIN, |began| {
        (now + STOP_DRAIN).min(*began + STOP_BUDGET)
    });
    let busy = stop_sending(&stopping_providers, &callback_worker, deadline, &log).await;
    match store.release_leases(busy).await {
        Ok(count) => info!(log, "released leases"; "count" => count),
        Err(e) => warn!(log, "could not release leases"; "error" => e.to_string()),
    }
    // No query may still run as the process exits (see `Store::close`).
    store.close().await;
    Ok(())
}

/// Tells every provider and the callback worker to start nothing more, and waits until
/// `deadline` at most for the attempts and callback tries under way and their records;
/// answers the messages still under way then.
async fn stop_sending(
    providers: &BTreeMap<String, Addr<provider::ProviderActor>>,
    callbacks: &Addr<CallbackWorker>,
    deadline: tokio::time::Instant,
    log: &Logger,
) -> Vec<i64> {
    loop {
        let mut busy = Vec::new();
        for provider in providers.values() {
            busy.extend(
                provider
                    .send(provider::StopSending)
                    .await
                    .unwrap_or_default(),
            );
        }
        let trying = callbacks.send(StopCallbacks).await.unwrap_or_default();
        let done = busy.is_empty() && trying == 0;
        if done || tokio::time::Instant::now() >= deadline {
            if !busy.is_empty() {
                warn!(log, "attempts still under way at the stop"; "count" => busy.len());
            }
            if trying > 0 {
                warn!(log, "callbacks still under way at the stop"; "count" => trying);
            }
            return busy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first address `bind` resolves to that can be bound. A name such as `localhost`
/// resolves to `127.0.0.1` and `::1`; bound to both, port 0 gave each a port of its own
/// and two `listening` lines, where CONTRACT 1 promises one line with the bound address.
/// Tried in turn, so `::1` first on a host without IPv6 still ends on `127.0.0.1`.
fn first_address(bind: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let mut last_error = None;
    for addr in bind
        .to_socket_addrs()
        .with_context(|| format!("resolving {bind}"))?
    {
        // The trial socket is closed at once: actix binds the address itself, with its
        // own backlog (a port of 0 is picked afresh then).
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e).with_context(|| format!("binding {bind}")),
        None => anyhow::bail!("{bind} resolves to no address"),
    }
}

/// Raises the soft limit of open files to the hard one. The connection watch holds a
/// second descriptor of each connection's socket (see `http::connections`), so the soft
/// limit most systems start a process with (1,024) would run out at about 500 connections;
/// the soft limit is the process's own to raise, up to the hard limit the operator set, as
/// Go's runtime does for every program.
fn raise_open_file_limit(log: &Logger) {
    let soft = rlimit::Resource::NOFILE.get().map(|(soft, _)| soft);
    match (soft, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(from), Ok(to)) if to > from => {
            info!(log, "open file limit raised"; "from" => from, "to" => to);
        }
        (Ok(_), Ok(_)) => {}
        (Err(e), _) | (_, Err(e)) => {
            warn!(log, "could not raise the open file limit"; "error" => e.to_string());
        }
    }
}

/// An exclusive lock on a SQLite database file for as long as the process runs (none for
/// PostgreSQL). SQLite serves one instance: a second process on the same file would clear
/// the first one's leases at its start and send the messages the first is sending. Held
/// with `flock`, which SQLite's own locks (`fcntl`) never meet, and which the kernel
/// drops when the process ends, however it ends.
fn lock_sqlite_file(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Ok(path) = store::sqlite_path(url) else {
        return Ok(None);
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening database {path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "the SQLite database {path} is in use by another process: SQLite serves one \
             instance (several share a PostgreSQL database)"
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking database {path}"))
        }
    }
}

/// SIGTERM and SIGINT. The handlers are installed when this is made, and a signal that
/// comes before `next` is awaited is kept for it.
struct StopSignals(Option<(Signal, Signal)>);

impl StopSignals {
    fn listen() -> Self {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => StopSignals(Some((term, int))),
            // Without signal handlers the process still stops on the default action.
            _ => StopSignals(None),
        }
    }

    /// Waits for SIGTERM or SIGINT, whichever comes first.
    async fn next(self) -> &'static str {
        let Some((mut term, mut int)) = self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_address;

    #[test]
    fn a_bind_is_one_address_the_first_its_name_resolves_to() {
        let addr = first_address("localhost:0").expect("resolves");
        assert!(addr.ip().is_loopback() && addr.port() == 0, "{addr}");
        assert_eq!(
            first_address("[::1]:8080").expect("literal").to_string(),
            "[::1]:8080"
        );
        // An address in use is skipped for the next; with none left, the error says so.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = taken.local_addr().expect("addr").port();
        assert!(first_address(&format!("127.0.0.1:{port}")).is_err());
    }
}
