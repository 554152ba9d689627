//! Storage for dispatch: recording each attempt together with the message status it leads
//! to, failing a message that cannot be routed, and loading the queued work a new start
//! must resume.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::schema::{dispatch_attempts, messages};
use super::StoreError;
use crate::domain::{Direction, MessageStatus, Timestamp};

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

pub(super) fn record_attempt(
    conn: &mut SqliteConnection,
    record: &AttemptRecord,
) -> Result<(), StoreError> {
    let now = Timestamp::now().to_storage();
    let attempt = i32::try_from(record.attempt).unwrap_or(i32::MAX);
    diesel::insert_into(dispatch_attempts::table)
        .values((
            dispatch_attempts::message_id.eq(record.message_id),
            dispatch_attempts::provider_name.eq(&record.provider),
            dispatch_attempts::attempt.eq(attempt),
            dispatch_attempts::outcome.eq(record.outcome),
            dispatch_attempts::latency_ms.eq(i64::try_from(record.latency_ms).unwrap_or(i64::MAX)),
            dispatch_attempts::error_code.eq(record.error_code),
            dispatch_attempts::created_at.eq(&now),
        ))
        .execute(conn)?;
    // A record written late (after a database fault) must not roll a newer status back.
    diesel::update(messages::table.find(record.message_id))
        .filter(messages::attempt_count.lt(attempt))
        .set((
            messages::status.eq(record.status.as_str()),
            messages::attempt_count.eq(attempt),
            messages::next_attempt_at.eq(record.next_attempt_at.map(Timestamp::to_storage)),
            messages::updated_at.eq(&now),
        ))
        .execute(conn)?;
    Ok(())
}

pub(super) fn mark_failed(conn: &mut SqliteConnection, id: &i64) -> Result<(), StoreError> {
    diesel::update(messages::table.find(*id))
        .set((
            messages::status.eq(MessageStatus::Failed.as_str()),
            messages::next_attempt_at.eq(None::<String>),
            messages::updated_at.eq(Timestamp::now().to_storage()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Every queued outbound message, oldest first.
pub(super) fn load_queued(conn: &mut SqliteConnection) -> Result<Vec<QueuedMessage>, StoreError> {
    let rows = messages::table
        .filter(messages::status.eq(MessageStatus::Queued.as_str()))
        .filter(messages::direction.eq(Direction::Outbound.as_str()))
        .order(messages::id.asc())
        .select((
            messages::id,
            messages::channel,
            messages::provider_name,
            messages::attempt_count,
            messages::next_attempt_at,
        ))
        .load::<(i64, String, Option<String>, i32, Option<String>)>(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, channel, provider, attempts, next)| QueuedMessage {
            id,
            channel,
            provider,
            attempts_made: u32::try_from(attempts).unwrap_or(0),
            next_attempt_at: next.as_deref().and_then(Timestamp::from_storage),
        })
        .collect())
}
