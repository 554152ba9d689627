//! `LeaseKeeper`: the lease work of one instance. Every queued message is leased to the
//! instance working it (taken when it is accepted or claimed); the keeper renews the
//! leases of the messages this instance's providers hold in memory, three times per lease,
//! and has the router sweep twice per lease for messages whose lease lapsed: an instance
//! that died, a message this one lost track of (a write that timed out after committing),
//! or one whose renewal failed; the router claims them as far as the backlog has room,
//! and once a second the keeper has it claim what waited for room. Renewals also resync
//! the database's clock, which every lease is read and written in, and the operators' breaker
//! settings, so that every instance obeys them within one renewal period.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context};
use slog::{info, warn, Logger};

use crate::breaker::Override;
use crate::provider::{ForceBreaker, GetHeldIds, LeasesLost, ProviderActor};
use crate::router::{ClaimQueued, RouterActor};
use crate::store::Store;

pub struct LeaseKeeper {
    store: Store,
    providers: Arc<BTreeMap<String, Addr<ProviderActor>>>,
    router: Addr<RouterActor>,
    log: Logger,
    /// A renewal is under way: the next waits for it rather than piling up behind a slow
    /// database, each with its reads and its write.
    renewing: Arc<AtomicBool>,
}

impl LeaseKeeper {
    pub fn new(
        store: Store,
        providers: Arc<BTreeMap<String, Addr<ProviderActor>>>,
        router: Addr<RouterActor>,
        log: &Logger,
    ) -> Self {
        LeaseKeeper {
            store,
            providers,
            router,
            log: log.new(slog::o!("actor" => "leases")),
            renewing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hands every provider the operator's setting stored for it, so that a setting made
    /// through another instance holds here within one renewal period.
    pub async fn sync_breakers(
        store: &Store,
        providers: &BTreeMap<String, Addr<ProviderActor>>,
        log: &Logger,
    ) {
        match store.breaker_overrides().await {
            Ok(overrides) => {
                for (name, state, stamp) in overrides {
                    let (Some(provider), Some(to)) =
                        (providers.get(&name), Override::parse(&state))
                    else {
                        continue;
                    };
                    provider.do_send(ForceBreaker { to, stamp });
                }
            }
            Err(e) => warn!(log, "could not read breaker settings"; "error" => e.to_string()),
        }
    }

    async fn renew(
        store: Store,
        providers: Arc<BTreeMap<String, Addr<ProviderActor>>>,
        log: Logger,
    ) {
        // The leases first: the rest may each take up to the database's timeout, and a
        // lease written after them could lapse meanwhile (the clock's last offset will do).
        Self::renew_held(&store, &providers, &log).await;
        if let Err(e) = store.sync_clock().await {
            warn!(log, "could not read the database clock"; "error" => e.to_string());
        }
        Self::sync_breakers(&store, &providers, &log).await;
        match store.apply_early_receipts().await {
            Ok(0) => {}
            Ok(applied) => info!(log, "early receipts applied"; "count" => applied),
            Err(e) => warn!(log, "could not apply early receipts"; "error" => e.to_string()),
        }
    }

    async fn renew_held(
        store: &Store,
        providers: &BTreeMap<String, Addr<ProviderActor>>,
        log: &Logger,
    ) {
        let mut held = Vec::new();
        for provider in providers.values() {
            if let Ok(ids) = provider.send(GetHeldIds).await {
                held.extend(ids);
            }
        }
        if held.is_empty() {
            return;
        }
        let renewed = store.renew_leases(held).await;
        if let Some(e) = renewed.failed {
            warn!(log, "could not renew leases"; "error" => e.to_string());
        }
        // Among them are messages finished a moment ago (their records landed), which no
        // provider holds any more: each provider drops only those it holds. On SQLite one
        // instance owns the file, so a lease found gone means nothing (a message finished
        // meanwhile), and none is dropped.
        if !renewed.lost.is_empty() && store.shares_work() {
            for provider in providers.values() {
                provider.do_send(LeasesLost(renewed.lost.clone()));
            }
        }
    }
}

/// Clears the keeper's `renewing` flag when the renewal holding it ends.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let lease = self.store.lease_duration();
        ctx.run_interval(lease / 3, |keeper, _| {
            if keeper.renewing.swap(true, Ordering::AcqRel) {
                return;
            }
            let (store, providers, log, renewing) = (
                keeper.store.clone(),
                keeper.providers.clone(),
                keeper.log.clone(),
                keeper.renewing.clone(),
            );
            actix::spawn(async move {
                // Let go however the renewal ends, a panic included: else none would run again.
                let _done = Done(renewing);
                Self::renew(store, providers, log).await;
            });
        });
        ctx.run_interval(lease / 2, |keeper, _| {
            keeper.router.do_send(ClaimQueued::Sweep);
        });
        // Messages a claim left in the database for want of room (a bulk retry larger
        // than the backlog) go out as room comes back, not a half lease later.
        ctx.run_interval(Duration::from_secs(1), |keeper, _| {
            keeper.router.do_send(ClaimQueued::IfWaitingForRoom);
        });
    }
}
