//! Storage for dispatch: recording each attempt together with the message status it leads
//! to, failing a message that cannot be routed, claiming the queued work an instance is to
//! do, and the leases by which instances sharing a PostgreSQL database split that work.

use diesel::prelude::*;

use super::backend::{for_cached_chunks, for_each_backend, BindFixed, FixedSql};
use super::rows::NewAttemptRow;
use super::schema::{breaker_overrides, dispatch_attempts, messages, readiness_probe};
use super::StoreError;
use crate::domain::{Direction, MessageStatus, Timestamp};

/// `status = 'queued'`, written into the SQL rather than bound: the partial index on
/// queued messages (`messages_queued`) serves only a query whose text names the value
/// (when a statement is prepared, a bound value could be anything), and without it a
/// claim reads the whole table.
pub(crate) fn is_queued() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("status = 'queued'")
}

/// An instance's claim on queued messages: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: Timestamp,
}

/// A claim on queued work: by `lease`, at most `limit` messages with ids above
/// `after_id`, whose lease lapsed at `now` (the database's clock) or never was.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub lease: Lease,
    pub now: Timestamp,
    pub limit: i64,
    pub after_id: i64,
}

/// Extends `lease` over the messages this instance holds in memory, and only those: a
/// message it lost track of lapses, and a sweep claims it again.
#[derive(Debug, Clone)]
pub(crate) struct Renewal {
    pub lease: Lease,
    pub ids: Vec<i64>,
}

/// How many ids one renewal statement names (SQLite binds each as a parameter).
const RENEWAL_CHUNK: usize = 5_000;

pub(crate) type QueuedRow = (
    i64,
    String,
    Option<String>,
    i32,
    Option<String>,
    String,
    i32,
);

/// The ids of the queued outbound messages a `Claim` may take (above its `after_id`, their
/// lease lapsed or never written), oldest first: one query for the claims of both
/// backends and the read that asks whether any are left. A macro, since each backend
/// builds its own query type from it.
macro_rules! claimable_ids {
    ($claim:expr) => {
        messages::table
            .select(messages::id)
            .filter(is_queued())
            .filter(messages::direction.eq(Direction::Outbound.as_str()))
            .filter(messages::id.gt($claim.after_id))
            .filter(
                messages::lease_until
                    .is_null()
                    .or(messages::lease_until.lt($claim.now.to_storage())),
            )
            .order(messages::id.asc())
    };
}

/// The columns of a `QueuedRow`, for every statement that hands queued messages back.
macro_rules! queued_columns {
    () => {
        (
            messages::id,
            messages::channel,
            messages::provider_name,
            messages::attempt_count,
            messages::next_attempt_at,
            messages::from_addr,
            messages::retry_base,
        )
    };
}
pub(crate) use queued_columns;

pub(crate) fn queued_message(
    (id, channel, provider, attempts, next, from, retry_base): QueuedRow,
) -> QueuedMessage {
    QueuedMessage {
        id,
        channel,
        provider,
        from,
        retry_base: u32::try_from(retry_base).unwrap_or(0),
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
    pub error_code: Option<String>,
    /// The provider's id of the message, from a successful real attempt.
    pub provider_message_id: Option<String>,
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
    /// Its sender, which `sender_interval` spaces.
    pub from: String,
    /// Attempts made before its latest retry (section 10): the retry's own budget of
    /// `max_attempts` counts from here.
    pub retry_base: u32,
    pub attempts_made: u32,
    pub next_attempt_at: Option<Timestamp>,
}

fn attempt_row(record: &AttemptRecord, instance: &str, now: &str) -> NewAttemptRow {
    NewAttemptRow {
        message_id: record.message_id,
        provider_name: record.provider.clone(),
        attempt: i32::try_from(record.attempt).unwrap_or(i32::MAX),
        outcome: record.outcome,
        latency_ms: i64::try_from(record.latency_ms).unwrap_or(i64::MAX),
        error_code: record.error_code.clone(),
        provider_message_id: record.provider_message_id.clone(),
        created_at: now.to_owned(),
        message_status: Some(record.status.as_str()),
        next_attempt_at: record.next_attempt_at.map(Timestamp::to_storage),
        recorded_by: Some(instance.to_owned()),
    }
}

/// A batch's attempt records in one statement: one array per column (see
/// `InsertAttempts`).
const INSERT_ATTEMPTS: &str = "INSERT INTO dispatch_attempts (message_id, provider_name, \
    attempt, outcome, latency_ms, error_code, provider_message_id, created_at, \
    message_status, next_attempt_at, recorded_by) \
    SELECT * FROM unnest(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// How each backend inserts a batch's attempt records.
pub(super) trait InsertAttempts {
    fn insert_attempts(&mut self, rows: &[NewAttemptRow]) -> Result<(), StoreError>;
}

/// On SQLite, multi-row inserts of a few fixed sizes, each prepared once per connection
/// (`for_cached_chunks!`); the triggers run for each row as they do for one.
impl InsertAttempts for diesel::sqlite::SqliteConnection {
    fn insert_attempts(&mut self, rows: &[NewAttemptRow]) -> Result<(), StoreError> {
        for_cached_chunks!(rows, |chunk| {
            diesel::insert_into(dispatch_attempts::table)
                .values(chunk)
                .execute(self)?;
        });
        Ok(())
    }
}

/// On PostgreSQL one statement for any number of records, one array per column (see
/// `InsertMessages` in messages.rs): its statement triggers run once per batch.
impl InsertAttempts for diesel::pg::PgConnection {
    fn insert_attempts(&mut self, rows: &[NewAttemptRow]) -> Result<(), StoreError> {
        use super::messages::column;
        use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
        FixedSql(INSERT_ATTEMPTS)
            .bind::<Array<BigInt>, _>(column(rows, |row| row.message_id))
            .bind::<Array<Text>, _>(column(rows, |row| row.provider_name.as_str()))
            .bind::<Array<Integer>, _>(column(rows, |row| row.attempt))
            .bind::<Array<Text>, _>(column(rows, |row| row.outcome))
            .bind::<Array<BigInt>, _>(column(rows, |row| row.latency_ms))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.error_code.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| {
                row.provider_message_id.as_deref()
            }))
            .bind::<Array<Text>, _>(column(rows, |row| row.created_at.as_str()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.message_status))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.next_attempt_at.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.recorded_by.as_deref()))
            .execute(self)?;
        Ok(())
    }
}

for_each_backend! {
    /// Whether a claim like `claim` would take anything: a read, no lease taken. A
    /// claim that found the backlog full asks it, to know whether messages wait in the
    /// database for room.
    pub(crate) fn any_claimable(conn: &mut Conn, claim: &Claim) -> Result<bool, StoreError> {
        Ok(claimable_ids!(claim)
            .first::<i64>(conn)
            .optional()?
            .is_some())
    }

    /// Clears every queued message's lease, at a SQLite start: one instance owns the
    /// file, so any lease in it is a dead predecessor's, and the claims that follow (which
    /// take only lapsed or missing leases) find them all.
    pub(crate) fn forget_leases(conn: &mut Conn, _: &()) -> Result<usize, StoreError> {
        Ok(diesel::update(messages::table)
            .filter(is_queued())
            .filter(messages::lease_owner.is_not_null())
            .set((
                messages::lease_owner.eq(None::<String>),
                messages::lease_until.eq(None::<String>),
            ))
            .execute(conn)?)
    }

    /// A trigger (`dispatch_attempts_fenced`; on PostgreSQL `dispatch_attempts_apply`)
    /// refuses the record when another instance holds the message's lease now
    /// (`StoreError::Superseded`).
    pub(crate) fn record_attempt(
        conn: &mut Conn,
        (record, instance): &(AttemptRecord, String),
    ) -> Result<(), StoreError> {
        let now = Timestamp::now().to_storage();
        // One cached insert: a trigger (`dispatch_attempts_set_message_status`; on
        // PostgreSQL `dispatch_attempts_apply`) applies the status it carries, unless a
        // later attempt was recorded first (a record written late, after a database
        // fault, never rolls a newer status back).
        diesel::insert_into(dispatch_attempts::table)
            .values(&attempt_row(record, instance, &now))
            .execute(conn)?;
        Ok(())
    }

    /// `record_attempt` for a batch's records, inserted together (`InsertAttempts`); the
    /// triggers run for each record as they do for one, and one
    /// superseded record fails its statement and so the batch's transaction (the batch is
    /// then rerun record by record).
    pub(crate) fn record_attempts(
        conn: &mut Conn,
        records: &[&(AttemptRecord, String)],
    ) -> Result<Vec<()>, StoreError> {
        let now = Timestamp::now().to_storage();
        let rows: Vec<NewAttemptRow> = records
            .iter()
            .map(|(record, instance)| attempt_row(record, instance, &now))
            .collect();
        conn.insert_attempts(&rows)?;
        Ok(vec![(); records.len()])
    }

    /// Only a queued message: a final status stays as it is.
    pub(crate) fn mark_failed(conn: &mut Conn, id: &i64) -> Result<(), StoreError> {
        diesel::update(messages::table.find(*id))
            .filter(messages::status.eq(MessageStatus::Queued.as_str()))
            .set((
                messages::status.eq(MessageStatus::Failed.as_str()),
                messages::next_attempt_at.eq(None::<String>),
                messages::updated_at.eq(Timestamp::now().to_storage()),
            ))
            .execute(conn)?;
        Ok(())
    }

    /// Renews the leases this instance still holds among `renewal.ids`; answers those.
    pub(crate) fn renew_leases(
        conn: &mut Conn,
        renewal: &Renewal,
    ) -> Result<Vec<i64>, StoreError> {
        let until = renewal.lease.until.to_storage();
        let mut renewed = Vec::with_capacity(renewal.ids.len());
        for ids in renewal.ids.chunks(RENEWAL_CHUNK) {
            renewed.extend(
                diesel::update(messages::table)
                    .filter(messages::id.eq_any(ids))
                    .filter(messages::lease_owner.eq(&renewal.lease.owner))
                    .filter(messages::status.eq(MessageStatus::Queued.as_str()))
                    .set(messages::lease_until.eq(&until))
                    .returning(messages::id)
                    .get_results::<i64>(conn)?,
            );
        }
        Ok(renewed)
    }

    /// Gives up this instance's leases (on a graceful stop), so others take over at once.
    pub(crate) fn release_leases(
        conn: &mut Conn,
        (owner, keep): &(String, Vec<i64>),
    ) -> Result<usize, StoreError> {
        Ok(diesel::update(messages::table)
            .filter(messages::lease_owner.eq(owner))
            .filter(is_queued())
            .filter(messages::id.ne_all(keep))
            .set((
                messages::lease_owner.eq(None::<String>),
                messages::lease_until.eq(None::<String>),
            ))
            .execute(conn)?)
    }

    pub(crate) fn lease_ids(
        conn: &mut Conn,
        claim: &Claim,
        ids: &[i64],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = diesel::update(messages::table.filter(messages::id.eq_any(ids)))
            .set((
                messages::lease_owner.eq(&claim.lease.owner),
                messages::lease_until.eq(claim.lease.until.to_storage()),
            ))
            .returning(queued_columns!())
            .get_results::<QueuedRow>(conn)?;
        rows.sort_by_key(|row| row.0);
        Ok(rows.into_iter().map(queued_message).collect())
    }

    /// Stores an operator's breaker setting for every instance to read; its stamp is the
    /// time it was stored.
    pub(crate) fn set_breaker_override(
        conn: &mut Conn,
        (provider, state): &(String, &'static str),
    ) -> Result<String, StoreError> {
        let now = Timestamp::now().to_storage();
        diesel::insert_into(breaker_overrides::table)
            .values((
                breaker_overrides::provider_name.eq(provider),
                breaker_overrides::state.eq(*state),
                breaker_overrides::updated_at.eq(&now),
            ))
            .on_conflict(breaker_overrides::provider_name)
            .do_update()
            .set((
                breaker_overrides::state.eq(*state),
                breaker_overrides::updated_at.eq(&now),
            ))
            .execute(conn)?;
        Ok(now)
    }

    /// Every stored setting: provider, state, stamp.
    pub(crate) fn breaker_overrides(
        conn: &mut Conn,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(breaker_overrides::table
            .select((
                breaker_overrides::provider_name,
                breaker_overrides::state,
                breaker_overrides::updated_at,
            ))
            .load(conn)?)
    }

    /// Who recorded attempt `attempt` of message `id` (`None`: not recorded; `Some(None)`:
    /// recorded by no instance in particular).
    pub(crate) fn attempt_recorded_by(
        conn: &mut Conn,
        id: i64,
        attempt: i32,
    ) -> Result<Option<Option<String>>, StoreError> {
        Ok(dispatch_attempts::table
            .filter(dispatch_attempts::message_id.eq(id))
            .filter(dispatch_attempts::attempt.eq(attempt))
            .select(dispatch_attempts::recorded_by)
            .first::<Option<String>>(conn)
            .optional()?)
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

/// One instance owns a SQLite database: no other claims at the same moment, so the rows
/// are selected and leased in one transaction without row locks.
pub(crate) fn claim_sqlite(
    conn: &mut diesel::sqlite::SqliteConnection,
    claim: &Claim,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let ids: Vec<i64> = claimable_sqlite(claim).load(conn)?;
    sqlite::lease_ids(conn, claim, &ids)
}

/// The ids a SQLite claim takes. It runs at every lease keeper's sweep, on the writer:
/// the index `messages_queued` must serve it (see the test below), or it reads the whole
/// table in rowid order.
fn claimable_sqlite(
    claim: &Claim,
) -> messages::BoxedQuery<'static, diesel::sqlite::Sqlite, diesel::sql_types::BigInt> {
    claimable_ids!(claim).limit(claim.limit).into_boxed()
}

/// Instances share a PostgreSQL database: a claim takes queued outbound messages whose
/// lease has lapsed by the database's clock (or that never had one) and that another
/// instance is not claiming at this moment (`FOR UPDATE SKIP LOCKED`), and leases them,
/// oldest first. This instance's own lapsed leases are claimed too: a message it lost
/// track of is not renewed, and comes back this way (a provider ignores one it holds).
pub(crate) fn claim_postgres(
    conn: &mut diesel::pg::PgConnection,
    claim: &Claim,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let ids: Vec<i64> = claimable_ids!(claim)
        .limit(claim.limit)
        .for_update()
        .skip_locked()
        .load(conn)?;
    postgres::lease_ids(conn, claim, &ids)
}

/// The database server's clock, so that every instance leases by the same one.
pub(crate) fn postgres_now(conn: &mut diesel::pg::PgConnection) -> Result<Timestamp, StoreError> {
    let micros: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
    ))
    .get_result(conn)?;
    Timestamp::from_unix_micros(micros)
        .ok_or_else(|| StoreError::Failed(format!("the database clock reads {micros} µs")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diesel::sql_types::Text;

    use super::*;
    use crate::store::backend::{open, DbConn};
    use crate::store::callbacks::{claimable_callbacks_sqlite, is_pending, CallbackClaim};
    use crate::store::schema::callbacks;

    #[derive(QueryableByName)]
    struct PlanStep {
        #[diesel(sql_type = Text)]
        detail: String,
    }

    /// `query`'s SQL and SQLite's plan for it (its parameters unbound: the plan does not
    /// depend on them), one step per line.
    fn plan(
        conn: &mut diesel::sqlite::SqliteConnection,
        query: &impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>,
    ) -> (String, String) {
        let shown = diesel::debug_query::<diesel::sqlite::Sqlite, _>(query).to_string();
        let sql = shown
            .split(" -- binds:")
            .next()
            .unwrap_or(&shown)
            .to_owned();
        let steps = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load::<PlanStep>(conn)
            .expect("plan")
            .into_iter()
            .map(|step| step.detail)
            .collect::<Vec<_>>()
            .join("\n");
        (sql, steps)
    }

    #[derive(QueryableByName)]
    struct Step {
        #[diesel(sql_type = Text)]
        opcode: String,
    }

    type SqliteConn = diesel::r2d2::PooledConnection<
        diesel::r2d2::ConnectionManager<diesel::sqlite::SqliteConnection>,
    >;

    /// A connection to a new SQLite database `file`, made by the service's migrations (the
    /// directory holding it lives as long as the first value).
    fn sqlite(file: &str) -> (tempfile::TempDir, SqliteConn) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join(file).display());
        let pool = open(&url, 1, 1, Duration::from_secs(5)).expect("open");
        let DbConn::Sqlite(conn) = pool.get().expect("connection") else {
            panic!("a SQLite url opens SQLite");
        };
        (dir, conn)
    }

    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }

    /// Every index on `messages` costs each new message an entry, and the queue's indexes
    /// a second change when its first attempt sets its status, on the writer: each must
    /// serve a read. `messages_queued_due` served none and is dropped (SQLite's migration
    /// 000012), and on PostgreSQL `messages_queued_lease` too (its 000011); this list is
    /// what stays on both, with its readers.
    #[test]
    fn messages_keep_only_the_indexes_some_query_reads() {
        for db in crate::store::messages::tests::databases() {
            let mut conn = db.pool.get().expect("connection");
            let names = match &mut conn {
                DbConn::Sqlite(c) => diesel::sql_query(
                    "SELECT name FROM sqlite_master \
                     WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL",
                )
                .load::<Name>(&mut **c),
                DbConn::Postgres(c) => diesel::sql_query(
                    "SELECT indexname AS name FROM pg_indexes \
                     WHERE tablename = 'messages' AND indexname <> 'messages_pkey'",
                )
                .load::<Name>(&mut **c),
            };
            let mut names: Vec<String> = names
                .expect("indexes")
                .into_iter()
                .map(|index| index.name)
                .collect();
            names.sort();
            assert_eq!(
                names,
                [
                    // A conversation's messages, in time order.
                    "messages_conversation_time",
                    // An Idempotency-Key's earlier request.
                    "messages_idempotency_key",
                    // An inbound message stored once per provider id (webhooks' dedupe).
                    "messages_inbound_provider_id",
                    // A delivery receipt finds its outbound message.
                    "messages_outbound_provider_id",
                    // Claims, the sweep and the release at a stop.
                    "messages_queued",
                ]
            );
        }
    }

    /// SQLite checks `x IN ('a', 'b', 'c')` by building a temporary b-tree of the values,
    /// again for every row a CHECK constraint or a trigger's condition looks at: that was
    /// a quarter of the writer's time per message. The writes every message makes (its
    /// insert, its attempt record with the status update and rules it sets off, a
    /// callback's state) must build none, triggers included.
    #[test]
    fn the_writes_of_every_message_build_no_temporary_tables() {
        let (_dir, mut conn) = sqlite("ops.db");
        for sql in [
            "INSERT INTO messages (conversation_id, direction, channel, from_addr, to_addr, \
             body, timestamp, status, created_at, updated_at, status_callback) \
             VALUES (1, 'outbound', 'sms', 'a', 'b', 'hi', 't', 'queued', 't', 't', 'http://x')",
            "INSERT INTO dispatch_attempts (message_id, provider_name, attempt, outcome, \
             latency_ms, created_at, message_status, recorded_by) \
             VALUES (1, 'p', 1, 'success', 0, 't', 'sent', 'me')",
            "UPDATE messages SET status = 'failed', updated_at = 't' WHERE id = 1",
            "UPDATE messages SET delivery_status = 'delivered' WHERE id = 1",
            "UPDATE callbacks SET state = 'delivered', attempts = 1 WHERE id = 1",
        ] {
            let steps = diesel::sql_query(format!("EXPLAIN {sql}"))
                .load::<Step>(&mut *conn)
                .expect("explain");
            assert!(steps.len() > 10, "{sql}: a program was shown");
            let temporary = steps
                .iter()
                .filter(|step| step.opcode == "OpenEphemeral")
                .count();
            assert_eq!(temporary, 0, "{sql}");
        }
    }

    /// A bound `status = ?` left SQLite walking all 10 M rows of the benchmark's largest
    /// database at every sweep (2.6 s each, on the writer): each polled query must name
    /// its partial index in its plan.
    #[test]
    fn claims_and_releases_read_the_queued_index_not_the_whole_table() {
        let (_dir, mut conn) = sqlite("plan.db");
        let claim = Claim {
            lease: Lease {
                owner: "a".into(),
                until: Timestamp::now(),
            },
            now: Timestamp::now(),
            limit: 512,
            after_id: 0,
        };
        let (sql, steps) = plan(&mut conn, &claimable_sqlite(&claim));
        assert!(
            steps.contains("USING INDEX messages_queued"),
            "{sql}\n{steps}"
        );
        let forget = diesel::update(messages::table)
            .filter(is_queued())
            .filter(messages::lease_owner.is_not_null())
            .set(messages::lease_owner.eq(None::<String>));
        let (sql, steps) = plan(&mut conn, &forget);
        assert!(
            steps.contains("USING INDEX messages_queued"),
            "{sql}\n{steps}"
        );
        let release = diesel::update(messages::table)
            .filter(messages::lease_owner.eq("a"))
            .filter(is_queued())
            .set(messages::lease_owner.eq(None::<String>));
        let (sql, steps) = plan(&mut conn, &release);
        assert!(
            steps.contains("USING INDEX messages_queued"),
            "{sql}\n{steps}"
        );

        let claim = CallbackClaim {
            lease: Lease {
                owner: "a".into(),
                until: Timestamp::now(),
            },
            now: Timestamp::now(),
            limit: 64,
        };
        // A range of the due index up to now, in its order: callbacks not yet due (a
        // failing receiver's, retrying for a day) are never read.
        let (sql, steps) = plan(&mut conn, &claimable_callbacks_sqlite(&claim));
        assert!(
            steps.contains("SEARCH callbacks USING INDEX callbacks_due (next_attempt_at<?)"),
            "{sql}\n{steps}"
        );
        assert!(!steps.contains("TEMP B-TREE"), "{sql}\n{steps}");
        let (sql, steps) = plan(&mut conn, &callbacks::table.filter(is_pending()).count());
        assert!(
            steps.contains("INDEX callbacks_pending") || steps.contains("INDEX callbacks_due"),
            "{sql}\n{steps}"
        );
    }
}
