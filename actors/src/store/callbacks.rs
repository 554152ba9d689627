//! The callback outbox (CONTRACT section 10) and the retry of failed messages. Rows of
//! `callbacks` are written in the transaction that sets the status they report: by
//! triggers when a status changes (`migrations/*/..._callbacks`), by the insert of a
//! message stored `failed` (`messages.rs`); so none is lost and none reports a status that
//! did not commit. Here they are claimed under a lease (one instance sends a given callback
//! at a time), finished, and listed. A retry is the one door back from `failed`.

use diesel::prelude::*;
use serde::Serialize;

use super::backend::for_each_backend;
use super::dispatch::{queued_columns, queued_message, Lease, QueuedMessage, QueuedRow};
use super::schema::{callbacks, messages};
use super::StoreError;
use crate::domain::{Direction, MessageStatus, Timestamp};

/// A callback as `GET /api/messages/{id}` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallbackView {
    /// The `webhook-id` it is sent with, the same on every try.
    pub id: String,
    /// `sent`, `failed`, `delivered` or `undelivered`.
    pub event: String,
    /// `pending`, `delivered` or `given_up`.
    pub state: String,
    pub attempts: i32,
    /// The last answer: an HTTP status, `timeout` or `connection`.
    pub last_result: Option<String>,
    pub created_at: String,
}

/// A callback claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCallback {
    pub id: i64,
    pub message_id: i64,
    pub webhook_id: String,
    pub event: String,
    pub url: String,
    pub created_at: Timestamp,
    /// Tries made before this one.
    pub attempts: u32,
}

type DueRow = (i64, i64, String, String, String, String, i32);

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackFate {
    Delivered,
    RetryAt(Timestamp),
    GivenUp,
}

#[derive(Debug, Clone)]
pub(crate) struct CallbackResult {
    pub id: i64,
    pub owner: String,
    pub fate: CallbackFate,
    pub result: String,
}

#[derive(Debug, Clone)]
pub(crate) struct CallbackClaim {
    pub lease: Lease,
    pub now: Timestamp,
    pub limit: i64,
}

/// Which failed messages to send again.
#[derive(Debug, Clone)]
pub enum RequeueTarget {
    One(i64),
    /// Every failed outbound message of a provider, failed at or after `since`.
    Provider {
        name: String,
        since: Timestamp,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Requeue {
    pub lease: Lease,
    pub id: i64,
}

/// One step of a bulk retry: the provider's failed messages among ids `after + 1 ..=
/// upto`, back to `queued` with no lease, for the claims to take as the backlog has room.
#[derive(Debug, Clone)]
pub(crate) struct RequeueRange {
    pub name: String,
    pub since: Timestamp,
    pub after: i64,
    pub upto: i64,
    pub now: Timestamp,
}

/// What a retry came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeued {
    /// Back to `queued`, leased to this instance: hand these to their providers.
    Messages(Vec<QueuedMessage>),
    /// A bulk retry's count: back to `queued` without a lease, for claims to take.
    Many(usize),
    NotFound,
    /// It exists but is not a failed outbound message.
    NotRetryable,
}

fn due(row: DueRow) -> DueCallback {
    let (id, message_id, webhook_id, event, url, created_at, attempts) = row;
    DueCallback {
        id,
        message_id,
        webhook_id,
        event,
        url,
        created_at: Timestamp::from_storage(&created_at).unwrap_or_else(Timestamp::now),
        attempts: u32::try_from(attempts).unwrap_or(0),
    }
}

/// `state = 'pending'`, written into the SQL rather than bound, so that the partial
/// indexes `callbacks_pending` and `callbacks_due` serve the polls and counts: the outbox
/// keeps every callback ever made, and a bound value would leave them reading all of it
/// (see `dispatch::is_queued`).
pub(crate) fn is_pending() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("state = 'pending'")
}

/// A callback as `callbacks_of` reads it (and PostgreSQL's message detail, as a JSON
/// array): webhook id, event, state, attempts, last result, created at.
pub(super) type CallbackRow = (String, String, String, i32, Option<String>, String);

pub(super) fn callback_view(
    (id, event, state, attempts, last_result, created_at): CallbackRow,
) -> CallbackView {
    CallbackView {
        id,
        event,
        state,
        attempts,
        last_result,
        created_at: Timestamp::from_storage(&created_at).map_or(created_at, Timestamp::to_rfc3339),
    }
}

for_each_backend! {
    pub(crate) fn lease_callbacks(
        conn: &mut Conn,
        claim: &CallbackClaim,
        ids: &[i64],
    ) -> Result<Vec<DueCallback>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = diesel::update(callbacks::table.filter(callbacks::id.eq_any(ids)))
            .set((
                callbacks::lease_owner.eq(&claim.lease.owner),
                callbacks::lease_until.eq(claim.lease.until.to_storage()),
            ))
            .returning((
                callbacks::id,
                callbacks::message_id,
                callbacks::webhook_id,
                callbacks::event,
                callbacks::url,
                callbacks::created_at,
                callbacks::attempts,
            ))
            .get_results::<DueRow>(conn)?;
        rows.sort_by_key(|row| row.0);
        Ok(rows.into_iter().map(due).collect())
    }

    pub(crate) fn finish_callback(conn: &mut Conn, done: &CallbackResult) -> Result<(), StoreError> {
        let (state, next) = match &done.fate {
            CallbackFate::Delivered => ("delivered", None),
            CallbackFate::GivenUp => ("given_up", None),
            CallbackFate::RetryAt(at) => ("pending", Some(at.to_storage())),
        };
        let target = callbacks::table
            .filter(callbacks::id.eq(done.id))
            .filter(callbacks::lease_owner.eq(&done.owner));
        match next {
            Some(next) => diesel::update(target)
                .set((
                    callbacks::state.eq(state),
                    callbacks::attempts.eq(callbacks::attempts + 1),
                    callbacks::next_attempt_at.eq(next),
                    callbacks::last_result.eq(&done.result),
                    callbacks::lease_owner.eq(None::<String>),
                    callbacks::lease_until.eq(None::<String>),
                ))
                .execute(conn)?,
            None => diesel::update(target)
                .set((
                    callbacks::state.eq(state),
                    callbacks::attempts.eq(callbacks::attempts + 1),
                    callbacks::last_result.eq(&done.result),
                    callbacks::lease_owner.eq(None::<String>),
                    callbacks::lease_until.eq(None::<String>),
                ))
                .execute(conn)?,
        };
        Ok(())
    }

    pub(crate) fn callbacks_of(conn: &mut Conn, message_id: i64) -> Result<Vec<CallbackView>, StoreError> {
        let rows = callbacks::table
            .filter(callbacks::message_id.eq(message_id))
            .order(callbacks::id.asc())
            .select((
                callbacks::webhook_id,
                callbacks::event,
                callbacks::state,
                callbacks::attempts,
                callbacks::last_result,
                callbacks::created_at,
            ))
            .load::<CallbackRow>(conn)?;
        Ok(rows.into_iter().map(callback_view).collect())
    }

    pub(crate) fn pending_callbacks(conn: &mut Conn) -> Result<i64, StoreError> {
        Ok(callbacks::table
            .filter(is_pending())
            .count()
            .get_result(conn)?)
    }

    /// Moves a failed outbound message back to `queued` (one more retry, the trigger's
    /// condition for leaving `failed`), leased to this instance.
    pub(crate) fn requeue(conn: &mut Conn, requeue: &Requeue) -> Result<Requeued, StoreError> {
        let now = Timestamp::now().to_storage();
        let rows = diesel::update(messages::table.find(requeue.id))
            .filter(messages::status.eq(MessageStatus::Failed.as_str()))
            .filter(messages::direction.eq(Direction::Outbound.as_str()))
            .set((
                messages::status.eq(MessageStatus::Queued.as_str()),
                messages::retries.eq(messages::retries + 1),
                messages::retry_base.eq(messages::attempt_count),
                messages::next_attempt_at.eq(None::<String>),
                messages::lease_owner.eq(&requeue.lease.owner),
                messages::lease_until.eq(requeue.lease.until.to_storage()),
                messages::updated_at.eq(&now),
            ))
            .returning(queued_columns!())
            .get_results::<QueuedRow>(conn)?;
        if rows.is_empty() {
            let exists = messages::table
                .find(requeue.id)
                .select(messages::id)
                .first::<i64>(conn)
                .optional()?
                .is_some();
            return Ok(if exists { Requeued::NotRetryable } else { Requeued::NotFound });
        }
        Ok(Requeued::Messages(rows.into_iter().map(queued_message).collect()))
    }

    /// One step of a bulk retry. The ids bound it, not a count of matches, so a step
    /// reads at most `upto - after` rows however sparse the failures are.
    pub(crate) fn requeue_range(conn: &mut Conn, step: &RequeueRange) -> Result<usize, StoreError> {
        Ok(diesel::update(messages::table)
            .filter(messages::id.gt(step.after))
            .filter(messages::id.le(step.upto))
            .filter(messages::status.eq(MessageStatus::Failed.as_str()))
            .filter(messages::direction.eq(Direction::Outbound.as_str()))
            .filter(messages::provider_name.eq(&step.name))
            .filter(messages::updated_at.ge(step.since.to_storage()))
            .set((
                messages::status.eq(MessageStatus::Queued.as_str()),
                messages::retries.eq(messages::retries + 1),
                messages::retry_base.eq(messages::attempt_count),
                messages::next_attempt_at.eq(None::<String>),
                messages::lease_owner.eq(None::<String>),
                messages::lease_until.eq(None::<String>),
                messages::updated_at.eq(step.now.to_storage()),
            ))
            .execute(conn)?)
    }

    /// The lowest and highest message ids, `None` for an empty table.
    pub(crate) fn message_id_bounds(conn: &mut Conn) -> Result<Option<(i64, i64)>, StoreError> {
        let (low, high) = messages::table
            .select((diesel::dsl::min(messages::id), diesel::dsl::max(messages::id)))
            .first::<(Option<i64>, Option<i64>)>(conn)?;
        Ok(low.zip(high))
    }
}

/// Due callbacks whose lease lapsed or never was, leased to this instance (SQLite: one
/// instance, no row locks needed).
pub(crate) fn claim_callbacks_sqlite(
    conn: &mut diesel::sqlite::SqliteConnection,
    claim: &CallbackClaim,
) -> Result<Vec<DueCallback>, StoreError> {
    let ids: Vec<i64> = claimable_callbacks_sqlite(claim).load(conn)?;
    sqlite::lease_callbacks(conn, claim, &ids)
}

/// The ids a SQLite callback claim takes, every 200 ms on the writer, earliest due first.
/// `callbacks_due` must serve it as a range up to now (see the test in
/// `store/dispatch.rs`): in id order it read every pending callback to find the due ones,
/// and a receiver down for a day keeps a day of callbacks pending (0.17 s a claim with a
/// million of them, five times a second, ahead of every new message). Due first is also
/// fairer: a failing receiver's retries back off behind other receivers' new callbacks.
pub(crate) fn claimable_callbacks_sqlite(
    claim: &CallbackClaim,
) -> callbacks::BoxedQuery<'static, diesel::sqlite::Sqlite, diesel::sql_types::BigInt> {
    let now = claim.now.to_storage();
    callbacks::table
        .select(callbacks::id)
        .filter(is_pending())
        .filter(callbacks::next_attempt_at.le(now.clone()))
        .filter(
            callbacks::lease_until
                .is_null()
                .or(callbacks::lease_until.lt(now)),
        )
        .order((callbacks::next_attempt_at.asc(), callbacks::id.asc()))
        .limit(claim.limit)
        .into_boxed()
}

/// The same on PostgreSQL, where instances share the outbox: `FOR UPDATE SKIP LOCKED`,
/// so two instances never claim one callback; `callbacks_due` serves the order.
pub(crate) fn claim_callbacks_postgres(
    conn: &mut diesel::pg::PgConnection,
    claim: &CallbackClaim,
) -> Result<Vec<DueCallback>, StoreError> {
    let now = claim.now.to_storage();
    let ids: Vec<i64> = callbacks::table
        .filter(is_pending())
        .filter(callbacks::next_attempt_at.le(&now))
        .filter(
            callbacks::lease_until
                .is_null()
                .or(callbacks::lease_until.lt(&now)),
        )
        .order((callbacks::next_attempt_at.asc(), callbacks::id.asc()))
        .limit(claim.limit)
        .select(callbacks::id)
        .for_update()
        .skip_locked()
        .load(conn)?;
    postgres::lease_callbacks(conn, claim, &ids)
}
