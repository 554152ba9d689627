//! Storage for dispatch: recording each attempt together with the message status it leads
//! to, failing a message that cannot be routed, claiming the queued work an instance is to
//! do, and the leases by which instances sharing a PostgreSQL database split that work.

use diesel::prelude::*;

use super::backend::for_each_backend;
use super::schema::{dispatch_attempts, messages, readiness_probe};
use super::StoreError;
use crate::domain::{Direction, MessageStatus, Timestamp};

/// An instance's claim on queued messages: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: Timestamp,
}

/// A claim on queued work: by `lease`, at most `limit` messages.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub lease: Lease,
    pub limit: i64,
}

type QueuedRow = (i64, String, Option<String>, i32, Option<String>);

fn queued_message((id, channel, provider, attempts, next): QueuedRow) -> QueuedMessage {
    QueuedMessage {
        id,
        channel,
        provider,
        attempts_made: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: next.as_deref().and_then(Timestamp::from_storage),
    }
}

/// One finished attempt and what it means for its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub message_id: i64,
    pub provider: String,
    pub attempt: u32,
    pub outcome: &'static str,
    pub latency_ms: u64,
    pub error_code: Option<&'static str>,
    /// `Queued` while retries remain, then `Sent` or `Failed`.
    pub status: MessageStatus,
    /// When the next attempt is due, for a message still queued.
    pub next_attempt_at: Option<Timestamp>,
}

/// A queued outbound message as recovery finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: i64,
    /// Raw: a stored row may hold a channel this build does not know.
    pub channel: String,
    pub provider: Option<String>,
    pub attempts_made: u32,
    pub next_attempt_at: Option<Timestamp>,
}

for_each_backend! {
    pub(crate) fn record_attempt(
        conn: &mut Conn,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now().to_storage();
        let attempt = i32::try_from(record.attempt).unwrap_or(i32::MAX);
        // One cached insert: the trigger `dispatch_attempts_set_message_status` applies the
        // status it carries, unless a later attempt was recorded first (a record written
        // late, after a database fault, never rolls a newer status back).
        diesel::insert_into(dispatch_attempts::table)
            .values((
                dispatch_attempts::message_id.eq(record.message_id),
                dispatch_attempts::provider_name.eq(&record.provider),
                dispatch_attempts::attempt.eq(attempt),
                dispatch_attempts::outcome.eq(record.outcome),
                dispatch_attempts::latency_ms.eq(i64::try_from(record.latency_ms).unwrap_or(i64::MAX)),
                dispatch_attempts::error_code.eq(record.error_code),
                dispatch_attempts::created_at.eq(&now),
                dispatch_attempts::message_status.eq(record.status.as_str()),
                dispatch_attempts::next_attempt_at
                    .eq(record.next_attempt_at.map(Timestamp::to_storage)),
            ))
            .execute(conn)?;
        Ok(())
    }

    pub(crate) fn mark_failed(conn: &mut Conn, id: &i64) -> Result<(), StoreError> {
        diesel::update(messages::table.find(*id))
            .set((
                messages::status.eq(MessageStatus::Failed.as_str()),
                messages::next_attempt_at.eq(None::<String>),
                messages::updated_at.eq(Timestamp::now().to_storage()),
            ))
            .execute(conn)?;
        Ok(())
    }

    /// Moves the lease of every queued message this instance works further out.
    pub(crate) fn renew_leases(conn: &mut Conn, lease: &Lease) -> Result<usize, StoreError> {
        Ok(diesel::update(messages::table)
            .filter(messages::lease_owner.eq(&lease.owner))
            .filter(messages::status.eq(MessageStatus::Queued.as_str()))
            .set(messages::lease_until.eq(lease.until.to_storage()))
            .execute(conn)?)
    }

    /// Gives up this instance's leases (on a graceful stop), so others take over at once.
    pub(crate) fn release_leases(conn: &mut Conn, owner: &String) -> Result<usize, StoreError> {
        Ok(diesel::update(messages::table)
            .filter(messages::lease_owner.eq(owner))
            .filter(messages::status.eq(MessageStatus::Queued.as_str()))
            .set((
                messages::lease_owner.eq(None::<String>),
                messages::lease_until.eq(None::<String>),
            ))
            .execute(conn)?)
    }

    /// One small write: readiness means the database takes writes, not only reads.
    pub(crate) fn probe(conn: &mut Conn, _: &()) -> Result<(), StoreError> {
        let now = Timestamp::now().to_storage();
        diesel::insert_into(readiness_probe::table)
            .values((readiness_probe::id.eq(1), readiness_probe::checked_at.eq(&now)))
            .on_conflict(readiness_probe::id)
            .do_update()
            .set(readiness_probe::checked_at.eq(&now))
            .execute(conn)?;
        Ok(())
    }
}

/// One instance owns a SQLite database, so its claim is every queued outbound message,
/// oldest first (recovery at start).
pub(crate) fn claim_sqlite(
    conn: &mut diesel::sqlite::SqliteConnection,
    claim: &Claim,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let rows = messages::table
        .filter(messages::status.eq(MessageStatus::Queued.as_str()))
        .filter(messages::direction.eq(Direction::Outbound.as_str()))
        .order(messages::id.asc())
        .limit(claim.limit)
        .select((
            messages::id,
            messages::channel,
            messages::provider_name,
            messages::attempt_count,
            messages::next_attempt_at,
        ))
        .load::<QueuedRow>(conn)?;
    Ok(rows.into_iter().map(queued_message).collect())
}

/// Instances share a PostgreSQL database: a claim takes queued outbound messages whose
/// lease has lapsed (or that never had one) and that another instance is not claiming at
/// this moment (`FOR UPDATE SKIP LOCKED`), and leases them, oldest first. Messages this
/// very instance leased are its own work already and are left out.
pub(crate) fn claim_postgres(
    conn: &mut diesel::pg::PgConnection,
    claim: &Claim,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let now = Timestamp::now().to_storage();
    let owner = &claim.lease.owner;
    let ids: Vec<i64> = messages::table
        .filter(messages::status.eq(MessageStatus::Queued.as_str()))
        .filter(messages::direction.eq(Direction::Outbound.as_str()))
        .filter(
            messages::lease_until
                .is_null()
                .or(messages::lease_until.lt(&now)),
        )
        .filter(
            messages::lease_owner
                .is_null()
                .or(messages::lease_owner.ne(owner)),
        )
        .order(messages::id.asc())
        .limit(claim.limit)
        .select(messages::id)
        .for_update()
        .skip_locked()
        .load(conn)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = diesel::update(messages::table.filter(messages::id.eq_any(&ids)))
        .set((
            messages::lease_owner.eq(owner),
            messages::lease_until.eq(claim.lease.until.to_storage()),
        ))
        .returning((
            messages::id,
            messages::channel,
            messages::provider_name,
            messages::attempt_count,
            messages::next_attempt_at,
        ))
        .get_results::<QueuedRow>(conn)?;
    rows.sort_by_key(|row| row.0);
    Ok(rows.into_iter().map(queued_message).collect())
}
