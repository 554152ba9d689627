//! Messages and conversations: the writes that create them (run inside a batch) and the
//! reads the API serves. Views returned here carry the contract's field names.

use std::collections::HashMap;

use diesel::prelude::*;
use serde::Serialize;

use super::backend::{for_cached_chunks, for_each_backend, BindFixed, FixedSql};
use super::dispatch::Lease;
use super::rows::{AttemptRow, ConversationRow, MessageRow, NewConversationRow, NewMessageRow};
use super::schema::{
    callbacks, conversation_counts, conversation_total, conversations, dispatch_attempts,
    early_receipts, messages,
};
use super::StoreError;
use crate::domain::{
    Channel, Direction, IdempotencyKey, MessageContent, MessageStatus, Participants, Timestamp,
};

/// How long a receipt that named no message is kept for its message's record: records
/// land within milliseconds, or seconds after a database fault.
const EARLY_RECEIPT_KEPT_MICROS: i64 = 60 * 60 * 1_000_000;
/// The most early receipts kept: what receipts for messages that are not this service's
/// (another system's on the same Twilio account, given this callback URL) can hold.
const EARLY_RECEIPTS_KEPT: i64 = 100_000;

/// A message and its dispatch attempts, oldest first.
pub type MessageWithAttempts = (MessageView, Vec<AttemptView>);

/// A message, its attempts, and the instance holding its lease, if any.
pub(crate) type LeasedMessage = (MessageView, Vec<AttemptView>, Option<String>);

/// An outbound message ready to store. `provider` is `None` when the registry has no
/// provider for the channel: the message is then stored `failed`.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub content: MessageContent,
    pub provider: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
    /// Set by the store: the accepting instance works the message it stored, so it takes
    /// the lease at once.
    pub lease: Option<Lease>,
    /// Where its final statuses are POSTed (CONTRACT section 10).
    pub status_callback: Option<String>,
    /// Not before this time (`send_at`); `None` means now.
    pub send_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundStored {
    Created {
        id: i64,
        conversation_id: i64,
    },
    /// An earlier request with the same key and body created this message.
    Replayed {
        id: i64,
        conversation_id: i64,
        channel: String,
        provider: Option<String>,
    },
    /// The key was used before with a different request.
    Conflict,
}

#[derive(Debug, Clone)]
pub struct NewInbound {
    pub content: MessageContent,
    pub provider_message_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundStored {
    Created { id: i64, conversation_id: i64 },
    Duplicate { id: i64, conversation_id: i64 },
}

/// What a provider's receipt says became of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Delivered,
    Undelivered,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
        }
    }
}

/// Whose receipt it is. Each names only messages of its own channels: the two APIs' ids
/// are different strings, but a receipt from one (SendGrid's events may come unsigned)
/// must never set the status of the other's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptSource {
    /// Twilio's status callback, always signed: SMS and MMS.
    Twilio,
    /// SendGrid's event webhook: email.
    SendGrid,
}

impl ReceiptSource {
    fn channels(self) -> &'static [&'static str] {
        match self {
            ReceiptSource::Twilio => &["sms", "mms"],
            ReceiptSource::SendGrid => &["email"],
        }
    }
}

/// A delivery receipt: the provider's id of the message, what became of it, its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    pub source: ReceiptSource,
    pub provider_message_id: String,
    pub status: DeliveryStatus,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

impl PageRequest {
    fn offset(self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.page_size)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

/// What a read bounded by the room its caller made for the answer found. The bound counts
/// bodies and attachments in UTF-8 bytes (a body of emoji is four bytes a character in
/// every copy of the answer): the rest of a message is small next to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded<T> {
    Loaded(T),
    /// The answer holds this many bytes, more than the room; nothing past its sizes (or,
    /// for one message, its own row) was read.
    Larger(i64),
}

/// A message's body and attachments in UTF-8 bytes, as both backends count them without
/// reading the text itself.
fn content_bytes(
) -> diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::BigInt>> {
    diesel::dsl::sql("CAST(octet_length(body) + coalesce(octet_length(attachments), 0) AS BIGINT)")
}

/// A message as the API shows it (the response body itself, so nothing copies it).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageView {
    pub id: i64,
    pub conversation_id: i64,
    /// `outbound` or `inbound`.
    #[cfg_attr(feature = "openapi", schema(example = "outbound"))]
    pub direction: String,
    #[cfg_attr(feature = "openapi", schema(example = "sms"))]
    pub channel: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub attachments: Option<Vec<String>>,
    pub timestamp: String,
    /// `queued`, `sent`, `failed` or `received`.
    #[cfg_attr(feature = "openapi", schema(example = "sent"))]
    pub status: String,
    /// Null for inbound messages and for outbound ones no provider served.
    pub provider: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// An email's subject, where the request gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The provider's own id: Twilio's `sid`, SendGrid's `X-Message-Id`, or an inbound
    /// webhook's id.
    pub provider_message_id: Option<String>,
    /// From the provider's delivery receipt: `delivered`, `undelivered`, or null.
    pub delivery_status: Option<String>,
    /// The provider's code for an undelivered message, where it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_error_code: Option<String>,
}

/// One dispatch attempt, as `GET /api/messages/{id}` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    pub attempt: i32,
    pub provider: String,
    /// `success`, `rate_limited`, `error` or `timeout`.
    pub outcome: String,
    pub latency_ms: i64,
    /// `500`, `429`, `timeout`, or null on success.
    pub error_code: Option<String>,
    pub at: String,
}

/// A conversation, as `GET /api/conversations` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationView {
    pub id: i64,
    /// The unordered pair, smaller address first; emails lower-cased.
    pub participants: [String; 2],
    pub message_count: i64,
    pub last_message_at: String,
}

/// Stored text timestamps are shown in the short RFC 3339 form clients send.
fn display_time(stored: &str) -> String {
    Timestamp::from_storage(stored).map_or_else(|| stored.to_owned(), Timestamp::to_rfc3339)
}

fn attachments_json(attachments: &Option<Vec<String>>) -> Option<String> {
    attachments
        .as_ref()
        .map(|list| serde_json::Value::from(list.clone()).to_string())
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        AttemptView {
            attempt: a.attempt,
            provider: a.provider_name,
            outcome: a.outcome,
            latency_ms: a.latency_ms,
            error_code: a.error_code,
            at: display_time(&a.created_at),
        }
    }
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        MessageView {
            id: row.id,
            conversation_id: row.conversation_id,
            direction: row.direction,
            channel: row.channel,
            from: row.from_addr,
            to: row.to_addr,
            body: row.body,
            // Only this code writes the column, always from a Vec<String>.
            attachments: row
                .attachments
                .and_then(|text| serde_json::from_str(&text).ok()),
            timestamp: display_time(&row.timestamp),
            status: row.status,
            provider: row.provider_name,
            created_at: display_time(&row.created_at),
            updated_at: display_time(&row.updated_at),
            subject: row.subject,
            provider_message_id: row.provider_message_id,
            delivery_status: row.delivery_status,
            delivery_error_code: row.delivery_error_code,
        }
    }
}

/// Inbound rows of `channel`'s provider-id namespace (the SMS webhook delivers SMS and MMS
/// with `messaging_provider_id`, the email webhook has `xillio_id`), written as the unique
/// index `messages_inbound_provider_id` is keyed and with its `direction` in the text:
/// a database uses an expression index only for the same expression, and a partial one
/// only when the query's text implies its condition. Written as `channel IN (?, ?)` with
/// a bound direction, the duplicate check of every webhook read every inbound row (21 ms
/// at 200,000 on SQLite), inside the writer's transaction.
pub(crate) fn inbound_family(
    channel: Channel,
) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(match channel {
        Channel::Sms | Channel::Mms => {
            "direction = 'inbound' AND \
             (CASE WHEN channel IN ('sms', 'mms') THEN 'sms' ELSE channel END) = 'sms'"
        }
        Channel::Email => {
            "direction = 'inbound' AND \
             (CASE WHEN channel IN ('sms', 'mms') THEN 'sms' ELSE channel END) = 'email'"
        }
    })
}

/// `direction = 'outbound'` in the SQL's text, for the queries that find an outbound
/// message by its provider id (delivery receipts): the partial index
/// `messages_outbound_provider_id` serves only a query whose text implies its condition,
/// and with the direction bound each receipt read the whole table on the writer (0.34 s
/// at a million messages on SQLite, measured by review).
pub(crate) fn is_outbound() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("direction = 'outbound'")
}

/// The outbound messages of `channels` with the provider's id `id`: what a delivery
/// receipt sets. A macro, so that the writes and the test reading their plan build the
/// same query (its type differs with the id's).
macro_rules! receipt_targets {
    ($channels:expr, $id:expr) => {
        messages::table
            .filter(is_outbound())
            .filter(messages::channel.eq_any($channels))
            .filter(messages::provider_message_id.eq($id))
    };
}

/// The early receipts whose message carries their provider id now (a macro for the same
/// reason as `receipt_targets`).
macro_rules! early_receipts_matched {
    () => {
        early_receipts::table.filter(diesel::dsl::exists(receipt_targets!(
            ReceiptSource::Twilio.channels(),
            early_receipts::provider_message_id.nullable()
        )))
    };
}

/// A new message's row, outbound and queued until `fill_outbound` or the inbound path
/// says otherwise.
fn message_row(
    content: &MessageContent,
    conversation_id: i64,
    timestamp: String,
    now: String,
) -> NewMessageRow {
    NewMessageRow {
        conversation_id,
        direction: Direction::Outbound.as_str(),
        channel: content.channel.as_str().to_owned(),
        from_addr: content.from.clone(),
        to_addr: content.to.clone(),
        body: content.body.clone(),
        attachments: attachments_json(&content.attachments),
        timestamp,
        provider_name: None,
        status: MessageStatus::Queued.as_str(),
        idempotency_key: None,
        request_fingerprint: None,
        provider_message_id: None,
        next_attempt_at: None,
        created_at: now.clone(),
        updated_at: now,
        lease_owner: None,
        lease_until: None,
        subject: content.subject.clone(),
        status_callback: None,
    }
}

/// A row stored `failed` with a callback URL: that URL and the row's time.
fn failed_callback(row: &NewMessageRow) -> Option<(&str, &str)> {
    (row.status == MessageStatus::Failed.as_str())
        .then_some(())
        .and(row.status_callback.as_deref())
        .map(|url| (url, row.updated_at.as_str()))
}

/// An outbound message is queued when it has a provider (leased to the instance that
/// stored it) and failed when not.
fn fill_outbound(row: &mut NewMessageRow, new: &NewOutbound) {
    row.provider_name = new.provider.clone();
    row.status = match new.provider {
        Some(_) => MessageStatus::Queued.as_str(),
        None => MessageStatus::Failed.as_str(),
    };
    if let Some(idempotency) = &new.idempotency {
        row.idempotency_key = Some(idempotency.key.clone());
        row.request_fingerprint = Some(idempotency.fingerprint.clone());
    }
    row.status_callback = new.status_callback.clone();
    row.next_attempt_at = new.send_at.map(Timestamp::to_storage);
    if let (Some(lease), Some(_)) = (&new.lease, &new.provider) {
        row.lease_owner = Some(lease.owner.clone());
        row.lease_until = Some(lease.until.to_storage());
    }
}

/// How each backend finds (or creates) the conversations of a batch's distinct pairs, in
/// the pairs' order. `last_message_at` of a created conversation is the time given with
/// its pair; the messages' insert trigger moves it on.
trait BatchConversations {
    fn conversation_ids(
        &mut self,
        pairs: &[(&Participants, &str)],
        now: &str,
    ) -> Result<Vec<i64>, StoreError>;
}

/// On SQLite a statement costs no round trip: one cached lookup per pair is cheaper than
/// preparing an `IN` list of each batch's length.
impl BatchConversations for diesel::sqlite::SqliteConnection {
    fn conversation_ids(
        &mut self,
        pairs: &[(&Participants, &str)],
        now: &str,
    ) -> Result<Vec<i64>, StoreError> {
        pairs
            .iter()
            .map(|(pair, time)| sqlite::find_or_create_conversation(self, pair, time, now))
            .collect()
    }
}

/// On PostgreSQL every statement is a round trip to the server: a batch of messages to
/// many recipients looked its conversations up one at a time (1.0-1.4k messages/s with
/// 10,000 recipients in a probe, 2.3-2.8k since), so the pairs are looked up in one
/// statement and the missing ones created in one more.
impl BatchConversations for diesel::pg::PgConnection {
    fn conversation_ids(
        &mut self,
        pairs: &[(&Participants, &str)],
        now: &str,
    ) -> Result<Vec<i64>, StoreError> {
        if let [(pair, time)] = pairs {
            return Ok(vec![postgres::find_or_create_conversation(
                self, pair, time, now,
            )?]);
        }
        let mut found = existing_conversations(self, pairs.iter().map(|(pair, _)| *pair))?;
        // Created in one order by every instance, so that two batches creating the same
        // pairs wait for each other in one direction only (a unique index's insert waits
        // for the other transaction holding that key).
        let mut missing: Vec<&(&Participants, &str)> = pairs
            .iter()
            .filter(|(pair, _)| !found.contains_key(*pair))
            .collect();
        missing.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if !missing.is_empty() {
            let rows: Vec<NewConversationRow> = missing
                .iter()
                .map(|(pair, time)| NewConversationRow {
                    participant_a: &pair.first,
                    participant_b: &pair.second,
                    message_count: 0,
                    created_at: now,
                    last_message_at: time,
                })
                .collect();
            let created: Vec<(i64, String, String)> = diesel::insert_into(conversations::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .returning((
                    conversations::id,
                    conversations::participant_a,
                    conversations::participant_b,
                ))
                .get_results(self)?;
            found.extend(
                created
                    .into_iter()
                    .map(|(id, first, second)| (Participants { first, second }, id)),
            );
            // What another instance created at this moment: its commit has been waited for.
            let raced: Vec<&Participants> = missing
                .iter()
                .map(|(pair, _)| *pair)
                .filter(|pair| !found.contains_key(*pair))
                .collect();
            if !raced.is_empty() {
                found.extend(existing_conversations(self, raced.into_iter())?);
            }
        }
        pairs
            .iter()
            .map(|(pair, _)| {
                found.get(*pair).copied().ok_or_else(|| {
                    StoreError::Failed("a created conversation could not be read back".into())
                })
            })
            .collect()
    }
}

/// The conversations of `pairs` that exist, matched pair by pair through the
/// participants index. The statement is not kept prepared (a literal SQL fragment makes
/// Diesel send it with its parameters in one round trip), so the server plans it for the
/// arrays it is given: a kept plan for `participant_a = ANY($1) AND participant_b =
/// ANY($2)` was made without the arrays and read every conversation of the sender (12 ms
/// at 10,000 recipients).
fn existing_conversations<'p>(
    conn: &mut diesel::pg::PgConnection,
    pairs: impl Iterator<Item = &'p Participants>,
) -> Result<HashMap<Participants, i64>, StoreError> {
    use diesel::sql_types::{Array, Bool, Text};
    let (firsts, seconds): (Vec<&str>, Vec<&str>) = pairs
        .map(|pair| (pair.first.as_str(), pair.second.as_str()))
        .unzip();
    let rows: Vec<(i64, String, String)> = conversations::table
        .filter(
            diesel::dsl::sql::<Bool>("(participant_a, participant_b) IN (SELECT * FROM unnest(")
                .bind::<Array<Text>, _>(firsts)
                .sql(", ")
                .bind::<Array<Text>, _>(seconds)
                .sql("))"),
        )
        .select((
            conversations::id,
            conversations::participant_a,
            conversations::participant_b,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, first, second)| (Participants { first, second }, id))
        .collect())
}

/// A batch's messages in one statement: one array per column (see `InsertMessages`).
const INSERT_MESSAGES: &str = "INSERT INTO messages (conversation_id, direction, channel, \
    from_addr, to_addr, body, attachments, timestamp, provider_name, status, idempotency_key, \
    request_fingerprint, provider_message_id, next_attempt_at, created_at, updated_at, \
    lease_owner, lease_until, subject, status_callback) \
    SELECT * FROM unnest(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    RETURNING id";

/// How each backend inserts a batch's new messages, answering their ids in the rows'
/// order.
trait InsertMessages {
    fn insert_messages(&mut self, rows: &[NewMessageRow]) -> Result<Vec<i64>, StoreError>;
}

/// On SQLite, multi-row inserts of a few fixed sizes, each prepared once per connection
/// (`for_cached_chunks!`): a statement costs no round trip, and its row trigger runs per
/// row whatever the statement.
impl InsertMessages for diesel::sqlite::SqliteConnection {
    fn insert_messages(&mut self, rows: &[NewMessageRow]) -> Result<Vec<i64>, StoreError> {
        let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
        for_cached_chunks!(rows, |chunk| {
            ids.extend(
                diesel::insert_into(messages::table)
                    .values(chunk)
                    .returning(messages::id)
                    .get_results::<i64>(self)?,
            );
        });
        // RETURNING promises no order, but each row's id is drawn as the rows are
        // inserted, in the order given (the next rowid), and the statements run in the
        // rows' order, so the ids in ascending order are the rows' in theirs.
        ids.sort_unstable();
        Ok(ids)
    }
}

/// On PostgreSQL every statement is a round trip and runs the statement triggers
/// (`messages_count_in_conversations`, three queries) once, and the fixed sizes split a
/// batch of 63 into six statements. One statement takes any number of rows as one array
/// per column, and its fixed text is prepared once per connection (`FixedSql`).
impl InsertMessages for diesel::pg::PgConnection {
    fn insert_messages(&mut self, rows: &[NewMessageRow]) -> Result<Vec<i64>, StoreError> {
        use diesel::sql_types::{Array, BigInt, Nullable, Text};
        let mut ids: Vec<i64> = FixedSql(INSERT_MESSAGES)
            .bind::<Array<BigInt>, _>(column(rows, |row| row.conversation_id))
            .bind::<Array<Text>, _>(column(rows, |row| row.direction))
            .bind::<Array<Text>, _>(column(rows, |row| row.channel.as_str()))
            .bind::<Array<Text>, _>(column(rows, |row| row.from_addr.as_str()))
            .bind::<Array<Text>, _>(column(rows, |row| row.to_addr.as_str()))
            .bind::<Array<Text>, _>(column(rows, |row| row.body.as_str()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.attachments.as_deref()))
            .bind::<Array<Text>, _>(column(rows, |row| row.timestamp.as_str()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.provider_name.as_deref()))
            .bind::<Array<Text>, _>(column(rows, |row| row.status))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.idempotency_key.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| {
                row.request_fingerprint.as_deref()
            }))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| {
                row.provider_message_id.as_deref()
            }))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.next_attempt_at.as_deref()))
            .bind::<Array<Text>, _>(column(rows, |row| row.created_at.as_str()))
            .bind::<Array<Text>, _>(column(rows, |row| row.updated_at.as_str()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.lease_owner.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.lease_until.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.subject.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |row| row.status_callback.as_deref()))
            .load::<InsertedId>(self)?
            .into_iter()
            .map(|row| row.id)
            .collect();
        // `unnest` yields the arrays in order and the sequence is drawn row by row as
        // they are inserted, so the ids in ascending order are the rows' in theirs.
        ids.sort_unstable();
        Ok(ids)
    }
}

/// One column of a batch's rows, as the array bound for it.
pub(super) fn column<'r, R, T>(rows: &'r [R], value: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

#[derive(QueryableByName)]
struct InsertedId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Messages a backend counted outside `conversations.message_count`, by conversation:
/// PostgreSQL's slotted rows (see the migration `conversation_counts`); none on SQLite,
/// whose single writer counts into the conversation's row.
trait SlottedCounts {
    fn added_counts(&mut self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError>;
}

impl SlottedCounts for diesel::sqlite::SqliteConnection {
    fn added_counts(&mut self, _ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        Ok(HashMap::new())
    }
}

impl SlottedCounts for diesel::pg::PgConnection {
    fn added_counts(&mut self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let rows: Vec<(i64, i64)> = conversation_counts::table
            .filter(conversation_counts::conversation_id.eq_any(ids))
            .select((
                conversation_counts::conversation_id,
                conversation_counts::added,
            ))
            .load(self)?;
        let mut added = HashMap::new();
        for (id, count) in rows {
            *added.entry(id).or_insert(0) += count;
        }
        Ok(added)
    }
}

for_each_backend! {
    /// Finds or creates the conversation of `participants`. Counting the message into it
    /// is a trigger's work (`messages_count_in_conversation`; on PostgreSQL
    /// `messages_count_in_conversations`, once per statement), done inside the message's
    /// insert; both statements here are cached.
    pub(super) fn find_or_create_conversation(
        conn: &mut Conn,
        participants: &Participants,
        message_time: &str,
        now: &str,
    ) -> Result<i64, StoreError> {
        let existing = conversations::table
            .filter(conversations::participant_a.eq(&participants.first))
            .filter(conversations::participant_b.eq(&participants.second))
            .select(conversations::id)
            .first::<i64>(conn)
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        // Another instance may create the same pair at this moment: the insert gives way
        // to it (waiting for its commit on PostgreSQL) and the pair is read back.
        let created = diesel::insert_into(conversations::table)
            .values(NewConversationRow {
                participant_a: &participants.first,
                participant_b: &participants.second,
                message_count: 0,
                created_at: now,
                last_message_at: message_time,
            })
            .on_conflict_do_nothing()
            .returning(conversations::id)
            .get_result(conn)
            .optional()?;
        match created {
            Some(id) => Ok(id),
            None => Ok(conversations::table
                .filter(conversations::participant_a.eq(&participants.first))
                .filter(conversations::participant_b.eq(&participants.second))
                .select(conversations::id)
                .first::<i64>(conn)?),
        }
    }

    /// `None` when a unique index (idempotency key, webhook provider id) already holds
    /// the message: an earlier request, or another instance at this very moment.
    fn insert_message(
        conn: &mut Conn,
        content: &MessageContent,
        fill: impl FnOnce(&mut NewMessageRow),
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let now = Timestamp::now().to_storage();
        let timestamp = content.timestamp.to_storage();
        let conversation_id =
            find_or_create_conversation(conn, &content.participants(), &timestamp, &now)?;
        let mut row = message_row(content, conversation_id, timestamp, now);
        fill(&mut row);
        let id = diesel::insert_into(messages::table)
            .values(&row)
            .on_conflict_do_nothing()
            .returning(messages::id)
            .get_result(conn)
            .optional()?;
        Ok(id.map(|id| (id, conversation_id)))
    }

    /// A message stored `failed` (no provider serves its channel) never changes status, so
    /// the trigger that queues callbacks on a status change never sees it: its `failed`
    /// callback is queued here, in the insert's transaction, as the trigger would have.
    fn queue_failed_callback(
        conn: &mut Conn,
        id: i64,
        (url, at): (&str, &str),
    ) -> Result<(), StoreError> {
        diesel::insert_into(callbacks::table)
            .values((
                callbacks::message_id.eq(id),
                callbacks::webhook_id.eq(format!("msg_{id}_failed_0")),
                callbacks::event.eq(MessageStatus::Failed.as_str()),
                callbacks::url.eq(url),
                callbacks::created_at.eq(at),
                callbacks::next_attempt_at.eq(at),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok(())
    }

    /// `insert_outbound` for a batch's messages without an idempotency key (which no
    /// unique index can refuse): their conversations found or created together
    /// (`BatchConversations`), then inserted together (`InsertMessages`).
    pub(crate) fn insert_outbound_many(
        conn: &mut Conn,
        news: &[&NewOutbound],
    ) -> Result<Vec<OutboundStored>, StoreError> {
        let now = Timestamp::now().to_storage();
        let participants: Vec<Participants> =
            news.iter().map(|new| new.content.participants()).collect();
        let timestamps: Vec<String> =
            news.iter().map(|new| new.content.timestamp.to_storage()).collect();
        // Each distinct pair once, with the time of its first message in the batch.
        let mut index: HashMap<&Participants, usize> = HashMap::new();
        let mut distinct: Vec<(&Participants, &str)> = Vec::new();
        for (pair, time) in participants.iter().zip(&timestamps) {
            index.entry(pair).or_insert_with(|| {
                distinct.push((pair, time));
                distinct.len() - 1
            });
        }
        let conversation_ids = conn.conversation_ids(&distinct, &now)?;
        let mut rows = Vec::with_capacity(news.len());
        for ((new, pair), timestamp) in news.iter().zip(&participants).zip(timestamps.iter()) {
            let conversation_id = conversation_ids[index[pair]];
            let mut row =
                message_row(&new.content, conversation_id, timestamp.clone(), now.clone());
            fill_outbound(&mut row, new);
            rows.push(row);
        }
        let ids = conn.insert_messages(&rows)?;
        for (id, row) in ids.iter().zip(&rows) {
            if let Some(callback) = failed_callback(row) {
                queue_failed_callback(conn, *id, callback)?;
            }
        }
        Ok(ids
            .into_iter()
            .zip(&rows)
            .map(|(id, row)| OutboundStored::Created {
                id,
                conversation_id: row.conversation_id,
            })
            .collect())
    }

    fn earlier_by_key(
        conn: &mut Conn,
        idempotency: &IdempotencyKey,
    ) -> Result<Option<OutboundStored>, StoreError> {
        let earlier = messages::table
            .filter(messages::idempotency_key.eq(&idempotency.key))
            .select((
                messages::id,
                messages::conversation_id,
                messages::channel,
                messages::provider_name,
                messages::request_fingerprint,
            ))
            .first::<(i64, i64, String, Option<String>, Option<String>)>(conn)
            .optional()?;
        Ok(earlier.map(|(id, conversation_id, channel, provider, fingerprint)| {
            if idempotency.matches(fingerprint.as_deref()) {
                OutboundStored::Replayed {
                    id,
                    conversation_id,
                    channel,
                    provider,
                }
            } else {
                OutboundStored::Conflict
            }
        }))
    }

    /// Applies a provider's delivery receipt to the outbound message of its channels it
    /// names; `None` when no message has that provider id yet. Such a receipt from Twilio
    /// is kept aside (`early_receipts`): its status callback may overtake the record of
    /// the attempt it follows (Twilio's answer still on its way, a record retrying after
    /// a database fault, another instance's still in its batch), and
    /// `apply_early_receipts` gives it to its message once that record lands; one for
    /// someone else's message is dropped after an hour. SendGrid's are not kept: its
    /// events come batched, up to 30 s after the send, and its webhook reports every
    /// email of the account, other systems' too.
    pub(crate) fn record_delivery(
        conn: &mut Conn,
        receipt: &DeliveryReceipt,
    ) -> Result<Option<i64>, StoreError> {
        let now = Timestamp::now().to_storage();
        let applied = diesel::update(receipt_targets!(
            receipt.source.channels(),
            &receipt.provider_message_id
        ))
            .set((
                messages::delivery_status.eq(receipt.status.as_str()),
                messages::delivery_error_code.eq(&receipt.error_code),
                messages::updated_at.eq(&now),
            ))
            .returning(messages::id)
            .get_result(conn)
            .optional()?;
        if applied.is_none() && receipt.source == ReceiptSource::Twilio {
            // The later of two early receipts for one message stands, as it would have.
            diesel::insert_into(early_receipts::table)
                .values((
                    early_receipts::provider_message_id.eq(&receipt.provider_message_id),
                    early_receipts::delivery_status.eq(receipt.status.as_str()),
                    early_receipts::delivery_error_code.eq(&receipt.error_code),
                    early_receipts::received_at.eq(&now),
                ))
                .on_conflict(early_receipts::provider_message_id)
                .do_update()
                .set((
                    early_receipts::delivery_status.eq(receipt.status.as_str()),
                    early_receipts::delivery_error_code.eq(&receipt.error_code),
                    early_receipts::received_at.eq(&now),
                ))
                .execute(conn)?;
        }
        Ok(applied)
    }

    /// Whether any receipt waits for its message (a read, so that the lease keeper
    /// writes nothing when none does, which is nearly always).
    pub(crate) fn any_early_receipt(conn: &mut Conn) -> Result<bool, StoreError> {
        Ok(early_receipts::table
            .select(early_receipts::provider_message_id)
            .first::<String>(conn)
            .optional()?
            .is_some())
    }

    /// Gives the early receipts whose messages now carry their provider id to those
    /// messages, and drops those older than an hour and any beyond the
    /// newest `EARLY_RECEIPTS_KEPT`; the number applied. A message that got a receipt of
    /// its own meanwhile keeps it: that one came later.
    pub(crate) fn apply_early_receipts(conn: &mut Conn, _: &()) -> Result<usize, StoreError> {
        let cutoff = Timestamp::now()
            .shifted(-EARLY_RECEIPT_KEPT_MICROS)
            .to_storage();
        diesel::delete(early_receipts::table.filter(early_receipts::received_at.lt(cutoff)))
            .execute(conn)?;
        let surplus = early_receipts::table
            .select(early_receipts::provider_message_id)
            .order(early_receipts::received_at.desc())
            .offset(EARLY_RECEIPTS_KEPT)
            .load::<String>(conn)?;
        for chunk in surplus.chunks(500) {
            diesel::delete(
                early_receipts::table.filter(early_receipts::provider_message_id.eq_any(chunk)),
            )
            .execute(conn)?;
        }
        let matched: Vec<(String, String, Option<String>)> = early_receipts_matched!()
            .select((
                early_receipts::provider_message_id,
                early_receipts::delivery_status,
                early_receipts::delivery_error_code,
            ))
            .limit(1_000)
            .load(conn)?;
        let now = Timestamp::now().to_storage();
        let mut applied = 0;
        for (provider_message_id, status, error_code) in &matched {
            applied += diesel::update(receipt_targets!(
                ReceiptSource::Twilio.channels(),
                provider_message_id
            ))
            .filter(messages::delivery_status.is_null())
                .set((
                    messages::delivery_status.eq(status),
                    messages::delivery_error_code.eq(error_code),
                    messages::updated_at.eq(&now),
                ))
                .execute(conn)?;
            diesel::delete(early_receipts::table.find(provider_message_id)).execute(conn)?;
        }
        Ok(applied)
    }

    /// The message an earlier request with the same key created, if any (a replay is
    /// answered whatever the backlog).
    pub(crate) fn find_by_idempotency_key(
        conn: &mut Conn,
        idempotency: &IdempotencyKey,
    ) -> Result<Option<OutboundStored>, StoreError> {
        earlier_by_key(conn, idempotency)
    }

    fn earlier_inbound(
        conn: &mut Conn,
        new: &NewInbound,
    ) -> Result<Option<InboundStored>, StoreError> {
        let earlier = messages::table
            .filter(inbound_family(new.content.channel))
            .filter(messages::provider_message_id.eq(&new.provider_message_id))
            .select((messages::id, messages::conversation_id))
            .first::<(i64, i64)>(conn)
            .optional()?;
        Ok(earlier.map(|(id, conversation_id)| InboundStored::Duplicate {
            id,
            conversation_id,
        }))
    }

    pub(crate) fn insert_outbound(
        conn: &mut Conn,
        new: &NewOutbound,
    ) -> Result<OutboundStored, StoreError> {
        if let Some(idempotency) = &new.idempotency {
            if let Some(earlier) = earlier_by_key(conn, idempotency)? {
                return Ok(earlier);
            }
        }
        let mut stored = None;
        let inserted = insert_message(conn, &new.content, |row| {
            fill_outbound(row, new);
            stored = failed_callback(row).map(|(url, at)| (url.to_owned(), at.to_owned()));
        })?;
        match (inserted, &new.idempotency) {
            (Some((id, conversation_id)), _) => {
                if let Some((url, at)) = &stored {
                    queue_failed_callback(conn, id, (url, at))?;
                }
                Ok(OutboundStored::Created {
                    id,
                    conversation_id,
                })
            }
            // Another instance inserted the same key between our look and our insert.
            (None, Some(idempotency)) => earlier_by_key(conn, idempotency)?.ok_or_else(|| {
                StoreError::Conflict("the idempotency key's message vanished".into())
            }),
            (None, None) => Err(StoreError::Conflict("an outbound message collided".into())),
        }
    }

    pub(crate) fn insert_inbound(
        conn: &mut Conn,
        new: &NewInbound,
    ) -> Result<InboundStored, StoreError> {
        if let Some(earlier) = earlier_inbound(conn, new)? {
            return Ok(earlier);
        }
        let inserted = insert_message(conn, &new.content, |row| {
            row.direction = Direction::Inbound.as_str();
            row.status = MessageStatus::Received.as_str();
            row.provider_message_id = Some(new.provider_message_id.clone());
        })?;
        match inserted {
            Some((id, conversation_id)) => Ok(InboundStored::Created {
                id,
                conversation_id,
            }),
            // The same provider id arrived through another instance at this moment.
            None => earlier_inbound(conn, new)?.ok_or_else(|| {
                StoreError::Conflict("the webhook's earlier message vanished".into())
            }),
        }
    }

    pub(crate) fn get_message(
        conn: &mut Conn,
        id: i64,
    ) -> Result<Option<(MessageView, Vec<AttemptView>)>, StoreError> {
        Ok(get_message_leased(conn, id)?.map(|(message, attempts, _)| (message, attempts)))
    }

    /// `get_message`, and who holds the message's lease, if anyone.
    pub(crate) fn get_message_leased(
        conn: &mut Conn,
        id: i64,
    ) -> Result<Option<LeasedMessage>, StoreError> {
        let Some((row, owner)) = messages::table
            .find(id)
            .select((MessageRow::as_select(), messages::lease_owner))
            .first::<(MessageRow, Option<String>)>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let attempts = attempts_of(conn, id)?;
        Ok(Some((row.into(), attempts, owner)))
    }

    /// A message and its attempts if its body and attachments fit in `room` bytes (none:
    /// any size). The size comes with the row, in one statement: a larger row is read
    /// and let go at once (one row of at most `server.max_body_bytes`), where a statement
    /// of its own would cost every read a round trip.
    pub(crate) fn get_message_within(
        conn: &mut Conn,
        id: i64,
        room: Option<i64>,
    ) -> Result<Option<Bounded<MessageWithAttempts>>, StoreError> {
        let Some((row, bytes)) = messages::table
            .find(id)
            .select((MessageRow::as_select(), content_bytes()))
            .first::<(MessageRow, Option<i64>)>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let bytes = bytes.unwrap_or(0);
        if room.is_some_and(|room| bytes > room) {
            return Ok(Some(Bounded::Larger(bytes)));
        }
        let attempts = attempts_of(conn, id)?;
        Ok(Some(Bounded::Loaded((row.into(), attempts))))
    }

    fn attempts_of(conn: &mut Conn, id: i64) -> Result<Vec<AttemptView>, StoreError> {
        Ok(dispatch_attempts::table
            .filter(dispatch_attempts::message_id.eq(id))
            .order(dispatch_attempts::attempt.asc())
            .select(AttemptRow::as_select())
            .load(conn)?
            .into_iter()
            .map(AttemptView::from)
            .collect())
    }

    pub(crate) fn list_conversations(
        conn: &mut Conn,
        page: PageRequest,
    ) -> Result<Page<ConversationView>, StoreError> {
        // Kept by the trigger `conversations_counted`: a COUNT(*) here grew with the table.
        // PostgreSQL's SUM of BIGINT is NUMERIC, hence the cast.
        let total = conversation_total::table
            .select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "CAST(COALESCE(SUM(total), 0) AS BIGINT)",
            ))
            .first::<i64>(conn)?;
        let rows: Vec<ConversationRow> = conversations::table
            .order((
                conversations::last_message_at.desc(),
                conversations::id.desc(),
            ))
            .limit(i64::from(page.page_size))
            .offset(page.offset())
            .select(ConversationRow::as_select())
            .load(conn)?;
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let added = conn.added_counts(&ids)?;
        let items = rows
            .into_iter()
            .map(|c| ConversationView {
                id: c.id,
                participants: [c.participant_a, c.participant_b],
                message_count: c.message_count + added.get(&c.id).copied().unwrap_or(0),
                last_message_at: display_time(&c.last_message_at),
            })
            .collect();
        Ok(Page { items, total })
    }

    /// How many bytes of bodies and attachments a page of a conversation's messages holds,
    /// read before the page itself (see `Bounded`).
    fn page_bytes(
        conn: &mut Conn,
        conversation_id: i64,
        page: PageRequest,
    ) -> Result<i64, StoreError> {
        let sizes: Vec<Option<i64>> = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .order((messages::timestamp.asc(), messages::id.asc()))
            .limit(i64::from(page.page_size))
            .offset(page.offset())
            .select(content_bytes())
            .load(conn)?;
        Ok(sizes.into_iter().flatten().sum())
    }

    /// `None` when the conversation does not exist; a page too large for `room` bytes
    /// (none: any size) is not loaded, only its size read.
    pub(crate) fn list_conversation_messages(
        conn: &mut Conn,
        conversation_id: i64,
        page: PageRequest,
        room: Option<i64>,
    ) -> Result<Option<Bounded<Page<MessageView>>>, StoreError> {
        let Some(counted) = conversations::table
            .find(conversation_id)
            .select(conversations::message_count)
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        if let Some(room) = room {
            let bytes = page_bytes(conn, conversation_id, page)?;
            if bytes > room {
                return Ok(Some(Bounded::Larger(bytes)));
            }
        }
        let total = counted
            + conn
                .added_counts(&[conversation_id])?
                .get(&conversation_id)
                .copied()
                .unwrap_or(0);
        let items = messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .order((messages::timestamp.asc(), messages::id.asc()))
            .limit(i64::from(page.page_size))
            .offset(page.offset())
            .select(MessageRow::as_select())
            .load(conn)?
            .into_iter()
            .map(MessageView::from)
            .collect();
        Ok(Some(Bounded::Loaded(Page { items, total })))
    }
}

/// `GET /api/messages/{id}` on PostgreSQL: the message, its attempts and its callbacks in
/// one statement, so one snapshot without a transaction, and fixed text kept prepared. A
/// `REPEATABLE READ` transaction around three statements gave the same agreement between
/// status and attempts at two more round trips a read: 0.6 x the reads a second.
pub(crate) fn message_detail_on_postgres(
    conn: &mut diesel::pg::PgConnection,
    id: i64,
    room: Option<i64>,
) -> Result<Option<Bounded<super::MessageDetailParts>>, StoreError> {
    const DETAIL: &str = "SELECT m.id, m.conversation_id, m.direction, m.channel, \
        m.from_addr, m.to_addr, m.body, m.attachments, m.timestamp, m.provider_name, \
        m.status, m.created_at, m.updated_at, m.subject, m.provider_message_id, \
        m.delivery_status, m.delivery_error_code, \
        CAST(octet_length(m.body) + COALESCE(octet_length(m.attachments), 0) AS BIGINT) \
          AS bytes, \
        (SELECT COALESCE(json_agg(json_build_array(a.attempt, a.provider_name, a.outcome, \
          a.latency_ms, a.error_code, a.created_at) ORDER BY a.attempt), '[]')::text \
          FROM dispatch_attempts a WHERE a.message_id = m.id) AS attempts, \
        (SELECT COALESCE(json_agg(json_build_array(c.webhook_id, c.event, c.state, \
          c.attempts, c.last_result, c.created_at) ORDER BY c.id), '[]')::text \
          FROM callbacks c WHERE c.message_id = m.id) AS callbacks \
        FROM messages m WHERE m.id = ?";
    #[derive(QueryableByName)]
    struct DetailRow {
        #[diesel(embed)]
        message: MessageRow,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        attempts: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        callbacks: String,
    }
    let Some(DetailRow {
        message: row,
        bytes,
        attempts,
        callbacks,
    }) = FixedSql(DETAIL)
        .bind::<diesel::sql_types::BigInt, _>(id)
        .get_result::<DetailRow>(conn)
        .optional()?
    else {
        return Ok(None);
    };
    if room.is_some_and(|room| bytes > room) {
        return Ok(Some(Bounded::Larger(bytes)));
    }
    let unreadable = |e: serde_json::Error| StoreError::from_message(&e.to_string());
    let attempts = serde_json::from_str::<Vec<AttemptRow>>(&attempts)
        .map_err(unreadable)?
        .into_iter()
        .map(AttemptView::from)
        .collect();
    let callbacks = serde_json::from_str::<Vec<super::callbacks::CallbackRow>>(&callbacks)
        .map_err(unreadable)?
        .into_iter()
        .map(super::callbacks::callback_view)
        .collect();
    Ok(Some(Bounded::Loaded((row.into(), attempts, callbacks))))
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use diesel::pg::PgConnection;
    use diesel::Connection;

    use super::*;
    use crate::store::backend::{in_write_transaction, open, DbConn, DbPool, Tx};
    use crate::store::dispatch::{self, AttemptRecord};

    /// A database to run on: SQLite always, and PostgreSQL too when the suite has a
    /// server (`MESSAGING_TEST_POSTGRES_URL`); the PostgreSQL one is dropped after.
    pub(in crate::store) struct TestDb {
        pub(in crate::store) pool: DbPool,
        _sqlite_dir: Option<tempfile::TempDir>,
        drop_pg: Option<(String, String)>,
    }

    impl TestDb {
        /// The PostgreSQL test database's URL, for connections of a test's own; `None`
        /// on SQLite.
        pub(in crate::store) fn postgres_url(&self) -> Option<String> {
            self.drop_pg
                .as_ref()
                .map(|(server, name)| format!("{server}/{name}"))
        }
    }

    /// How many sessions of `conn`'s database wait for a lock now.
    pub(in crate::store) fn sessions_waiting_for_a_lock(conn: &mut PgConnection) -> i64 {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM pg_stat_activity \
              WHERE datname = current_database() AND wait_event_type = 'Lock')",
        ))
        .get_result(conn)
        .expect("pg_stat_activity")
    }

    /// The `conversation_counts` slot a PostgreSQL connection's writes count into.
    fn backend_slot(conn: &mut PgConnection) -> i32 {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "pg_backend_pid() % 16",
        ))
        .get_result(conn)
        .expect("backend pid")
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if let Some((server, name)) = &self.drop_pg {
                if let Ok(mut admin) = PgConnection::establish(&format!("{server}/postgres")) {
                    let _ =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin);
                }
            }
        }
    }

    /// A line of SQLite's `EXPLAIN QUERY PLAN`.
    #[derive(QueryableByName)]
    struct PlanStep {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }

    /// A line of PostgreSQL's `EXPLAIN`.
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }

    /// `query`'s plan on `conn`'s backend, one step per line; on PostgreSQL the generic
    /// plan, with sequential scans priced out so that a usable index is always shown.
    fn explain<Q>(conn: &mut DbConn, query: &Q) -> String
    where
        Q: diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>
            + diesel::query_builder::QueryFragment<diesel::pg::Pg>,
    {
        let without_binds = |shown: String| {
            shown
                .split(" -- binds:")
                .next()
                .unwrap_or(&shown)
                .to_owned()
        };
        match conn {
            DbConn::Sqlite(c) => {
                let sql = without_binds(
                    diesel::debug_query::<diesel::sqlite::Sqlite, _>(query).to_string(),
                );
                diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
                    .load::<PlanStep>(&mut **c)
                    .expect("plan")
                    .into_iter()
                    .map(|step| step.detail)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            DbConn::Postgres(c) => {
                let sql =
                    without_binds(diesel::debug_query::<diesel::pg::Pg, _>(query).to_string());
                // The generic plan, as a statement prepared once and run many times gets:
                // a bound value there could be anything, so only the SQL's text can imply
                // a partial index's condition.
                let args: Vec<&str> = (1..)
                    .take_while(|n| sql.contains(&format!("${n}")))
                    .map(|n| {
                        if sql.contains(&format!("ANY(${n})")) {
                            "'{sms,mms}'"
                        } else {
                            "'1000'"
                        }
                    })
                    .collect();
                for setup in [
                    "SET enable_seqscan = off".to_owned(),
                    "SET plan_cache_mode = force_generic_plan".to_owned(),
                    format!("PREPARE plan_probe AS {sql}"),
                ] {
                    diesel::sql_query(setup).execute(&mut **c).expect("setup");
                }
                let plan =
                    diesel::sql_query(format!("EXPLAIN EXECUTE plan_probe({})", args.join(", ")))
                        .load::<PlanLine>(&mut **c)
                        .expect("plan")
                        .into_iter()
                        .map(|step| step.line)
                        .collect::<Vec<_>>()
                        .join("\n");
                diesel::sql_query("DEALLOCATE plan_probe")
                    .execute(&mut **c)
                    .expect("deallocate");
                plan
            }
        }
    }

    /// Whether `plan` reads `index` and never walks `messages` whole, on either backend.
    fn reads_index(plan: &str, index: &str) -> bool {
        (plan.contains(&format!("USING INDEX {index}"))
            || plan.contains(&format!("using {index}"))
            || plan.contains(&format!("Bitmap Index Scan on {index}")))
            && !plan.contains("SCAN messages")
            && !plan.contains("Seq Scan on messages")
    }

    /// The duplicate check of every inbound webhook, and the lookups of delivery receipts
    /// (each receipt, and the lease keeper's pass over early ones), run inside the
    /// writer's transaction: each must find its row through its index on both backends.
    /// A read of several statements sees one state of the database: a batch committed
    /// between two of its statements shows in neither (else a page could hold more than
    /// its total, or a message show an attempt its status has not caught up with).
    #[test]
    fn a_read_in_a_snapshot_does_not_see_a_commit_made_during_it() {
        use crate::store::backend::in_read_snapshot;
        for db in databases() {
            let mut reader = db.pool.get().expect("connection");
            let mut writer = db.pool.get().expect("a second connection");
            let (before, after) = in_read_snapshot(&mut reader, |tx| {
                let count = |tx: &mut Tx<'_>| match tx {
                    Tx::Sqlite(c) => conversations::table.count().get_result::<i64>(*c),
                    Tx::Postgres(c) => conversations::table.count().get_result::<i64>(*c),
                };
                let before = count(tx)?;
                in_write_transaction(&mut writer, |w| {
                    let message =
                        outbound(content("+12015550002", "+12015550001", "hi"), Some("p"));
                    match w {
                        Tx::Sqlite(c) => sqlite::insert_outbound_many(c, &[&message]),
                        Tx::Postgres(c) => postgres::insert_outbound_many(c, &[&message]),
                    }
                })?;
                Ok((before, count(tx)?))
            })
            .expect("read");
            assert_eq!((before, after), (0, 0), "the commit showed mid-read");
            drop(writer);
            let now = match &mut reader {
                DbConn::Sqlite(c) => conversations::table.count().get_result::<i64>(&mut **c),
                DbConn::Postgres(c) => conversations::table.count().get_result::<i64>(&mut **c),
            };
            assert_eq!(now.expect("count"), 1, "and shows to the next read");
        }
    }

    #[test]
    fn webhooks_and_receipts_find_their_message_through_an_index() {
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            for channel in [Channel::Sms, Channel::Mms, Channel::Email] {
                let duplicate = messages::table
                    .filter(inbound_family(channel))
                    .filter(messages::provider_message_id.eq("SM1"))
                    .select((messages::id, messages::conversation_id));
                let plan = explain(&mut conn, &duplicate);
                assert!(
                    reads_index(&plan, "messages_inbound_provider_id"),
                    "{channel:?}: {plan}"
                );
            }
            for source in [ReceiptSource::Twilio, ReceiptSource::SendGrid] {
                // `record_delivery`'s and `apply_early_receipts`' update.
                let receipt = receipt_targets!(source.channels(), "SM1").select(messages::id);
                let plan = explain(&mut conn, &receipt);
                assert!(
                    reads_index(&plan, "messages_outbound_provider_id"),
                    "{source:?}: {plan}"
                );
            }
            // `apply_early_receipts`' search for the receipts whose message is there now.
            let matched = early_receipts_matched!()
                .select(early_receipts::provider_message_id)
                .limit(1_000);
            let plan = explain(&mut conn, &matched);
            assert!(
                reads_index(&plan, "messages_outbound_provider_id"),
                "early receipts: {plan}"
            );
        }
    }

    pub(in crate::store) fn databases() -> Vec<TestDb> {
        // Tests run in parallel threads of one process: each database gets its own name.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bulk.db").display());
        let sqlite = TestDb {
            pool: open(&url, 1, 1, Duration::from_secs(10)).expect("open sqlite"),
            _sqlite_dir: Some(dir),
            drop_pg: None,
        };
        let mut all = vec![sqlite];
        if let Ok(server) = std::env::var("MESSAGING_TEST_POSTGRES_URL") {
            let server = server.trim_end_matches('/').to_owned();
            let name = format!(
                "store_test_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let mut admin =
                PgConnection::establish(&format!("{server}/postgres")).expect("postgres server");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .expect("drop a stale database");
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .expect("create database");
            all.push(TestDb {
                pool: open(
                    &format!("{server}/{name}"),
                    1,
                    crate::store::Backend::Postgres.writers(),
                    Duration::from_secs(10),
                )
                .expect("open postgres"),
                _sqlite_dir: None,
                drop_pg: Some((server, name)),
            });
        }
        all
    }

    fn content(from: &str, to: &str, body: &str) -> MessageContent {
        MessageContent {
            channel: Channel::Sms,
            from: from.to_owned(),
            to: to.to_owned(),
            body: body.to_owned(),
            attachments: None,
            timestamp: Timestamp::parse_rfc3339("2024-11-01T14:00:00Z").expect("valid"),
            subject: None,
        }
    }

    fn outbound(content: MessageContent, provider: Option<&str>) -> NewOutbound {
        NewOutbound {
            content,
            provider: provider.map(str::to_owned),
            idempotency: None,
            lease: Some(Lease {
                owner: "me".into(),
                until: Timestamp::after(Duration::from_secs(60)),
            }),
            status_callback: None,
            send_at: None,
        }
    }

    fn insert_one(conn: &mut DbConn, new: &NewOutbound) -> OutboundStored {
        in_write_transaction(conn, |tx| match tx {
            Tx::Sqlite(c) => sqlite::insert_outbound(c, new),
            Tx::Postgres(c) => postgres::insert_outbound(c, new),
        })
        .expect("insert one")
    }

    fn insert_many(conn: &mut DbConn, news: &[&NewOutbound]) -> Vec<OutboundStored> {
        in_write_transaction(conn, |tx| match tx {
            Tx::Sqlite(c) => sqlite::insert_outbound_many(c, news),
            Tx::Postgres(c) => postgres::insert_outbound_many(c, news),
        })
        .expect("insert many")
    }

    fn record_many(
        conn: &mut DbConn,
        records: &[&(AttemptRecord, String)],
    ) -> Result<Vec<()>, StoreError> {
        in_write_transaction(conn, |tx| match tx {
            Tx::Sqlite(c) => dispatch::sqlite::record_attempts(c, records),
            Tx::Postgres(c) => dispatch::postgres::record_attempts(c, records),
        })
    }

    fn read(conn: &mut DbConn, id: i64) -> (MessageView, Vec<AttemptView>) {
        match conn {
            DbConn::Sqlite(c) => sqlite::get_message(c, id),
            DbConn::Postgres(c) => postgres::get_message(c, id),
        }
        .expect("read")
        .expect("stored")
    }

    fn created(stored: &OutboundStored) -> (i64, i64) {
        match stored {
            OutboundStored::Created {
                id,
                conversation_id,
            } => (*id, *conversation_id),
            other => panic!("not created: {other:?}"),
        }
    }

    /// `count` queued SMS from one sender, each to an address of its own.
    fn new_messages(count: usize, to_prefix: &str) -> Vec<NewOutbound> {
        (0..count)
            .map(|n| {
                outbound(
                    content("+12015550001", &format!("{to_prefix}{n:04}"), "hi"),
                    Some("p"),
                )
            })
            .collect()
    }

    /// Stores `news` as one batch's multi-row inserts; their ids, in order.
    fn insert_ids(conn: &mut DbConn, news: &[NewOutbound]) -> Vec<i64> {
        insert_many(conn, &news.iter().collect::<Vec<_>>())
            .iter()
            .map(|a| created(a).0)
            .collect()
    }

    /// Attempt `attempt` of message `id`, recorded by `owner`: a success when it leads to
    /// `sent`, an error otherwise (retried in 5 s while `queued`).
    fn attempt(
        id: i64,
        attempt: u32,
        status: MessageStatus,
        owner: &str,
    ) -> (AttemptRecord, String) {
        let sent = status == MessageStatus::Sent;
        (
            AttemptRecord {
                message_id: id,
                provider: "p".into(),
                attempt,
                outcome: if sent { "success" } else { "error" },
                latency_ms: 3,
                error_code: (!sent).then(|| "500".to_owned()),
                provider_message_id: None,
                status,
                next_attempt_at: (status == MessageStatus::Queued)
                    .then(|| Timestamp::after(Duration::from_secs(5))),
            },
            owner.to_owned(),
        )
    }

    /// The messages of one batch share one insert: each answer must name its own row
    /// (ids are matched to rows by order) and its own conversation, whether that
    /// conversation existed before or the batch made it, and each conversation counts
    /// exactly its messages.
    #[test]
    fn a_message_stored_failed_with_a_callback_url_queues_its_failed_callback() {
        fn webhook_ids(conn: &mut DbConn, id: i64) -> Vec<String> {
            let query = callbacks::table
                .filter(callbacks::message_id.eq(id))
                .select(callbacks::webhook_id);
            match conn {
                DbConn::Sqlite(c) => query.load::<String>(c),
                DbConn::Postgres(c) => query.load::<String>(c),
            }
            .expect("callbacks")
        }
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let new = |provider: Option<&str>, url: Option<&str>| {
                let mut new = outbound(content("+12015550001", "+12015550002", "hi"), provider);
                new.status_callback = url.map(str::to_owned);
                new
            };
            let url = Some("https://client.example/hooks");
            let alone = created(&insert_one(&mut conn, &new(None, url))).0;
            let batch = [new(None, url), new(Some("p"), url), new(None, None)];
            let ids: Vec<i64> = insert_many(&mut conn, &batch.iter().collect::<Vec<_>>())
                .iter()
                .map(|stored| created(stored).0)
                .collect();
            assert_eq!(
                webhook_ids(&mut conn, alone),
                [format!("msg_{alone}_failed_0")]
            );
            assert_eq!(
                webhook_ids(&mut conn, ids[0]),
                [format!("msg_{}_failed_0", ids[0])]
            );
            assert!(
                webhook_ids(&mut conn, ids[1]).is_empty(),
                "queued: none yet"
            );
            assert!(webhook_ids(&mut conn, ids[2]).is_empty(), "no URL: none");
        }
    }

    #[test]
    fn a_batch_of_new_messages_gets_one_row_and_the_right_conversation_each() {
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let earlier = created(&insert_one(
                &mut conn,
                &outbound(
                    content("+12015550001", "+12015550002", "earlier"),
                    Some("p"),
                ),
            ));
            let pairs = [
                ("+12015550001", "+12015550002"),
                ("+12015550003", "+12015550004"),
                ("+12015550002", "+12015550001"),
                ("+12015550005", "+12015550006"),
            ];
            let news: Vec<NewOutbound> = (0..13)
                .map(|n| {
                    let (from, to) = pairs[n % pairs.len()];
                    let mut new = outbound(content(from, to, &format!("body {n}")), Some("p"));
                    if n == 5 {
                        new.provider = None;
                    }
                    if n == 7 {
                        new.content.attachments = Some(vec!["https://a.io/x.png".into()]);
                        new.content.channel = Channel::Mms;
                    }
                    new
                })
                .collect();
            let answers = insert_many(&mut conn, &news.iter().collect::<Vec<_>>());
            assert_eq!(answers.len(), news.len());

            let mut by_pair: HashMap<Participants, i64> = HashMap::new();
            by_pair.insert(news[0].content.participants(), earlier.1);
            let mut ids = Vec::new();
            for (new, answer) in news.iter().zip(&answers) {
                let (id, conversation_id) = created(answer);
                let (view, attempts) = read(&mut conn, id);
                assert_eq!(
                    (view.from.as_str(), view.to.as_str(), view.body.as_str()),
                    (
                        new.content.from.as_str(),
                        new.content.to.as_str(),
                        new.content.body.as_str()
                    )
                );
                assert_eq!(view.conversation_id, conversation_id);
                assert_eq!(view.attachments, new.content.attachments);
                assert_eq!(view.channel, new.content.channel.as_str());
                let status = if new.provider.is_some() {
                    "queued"
                } else {
                    "failed"
                };
                assert_eq!(view.status, status);
                assert!(attempts.is_empty());
                let known = *by_pair
                    .entry(new.content.participants())
                    .or_insert(conversation_id);
                assert_eq!(known, conversation_id, "one conversation per pair");
                ids.push(id);
            }
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), news.len(), "one row each");
            assert_eq!(by_pair.len(), 3);

            let conversations = match &mut conn {
                DbConn::Sqlite(c) => sqlite::list_conversations(
                    c,
                    PageRequest {
                        page: 1,
                        page_size: 10,
                    },
                ),
                DbConn::Postgres(c) => postgres::list_conversations(
                    c,
                    PageRequest {
                        page: 1,
                        page_size: 10,
                    },
                ),
            }
            .expect("conversations");
            assert_eq!(conversations.total, 3);
            for conversation in conversations.items {
                let in_batch = news
                    .iter()
                    .filter(|n| by_pair[&n.content.participants()] == conversation.id)
                    .count();
                let expected = i64::try_from(in_batch).expect("small")
                    + i64::from(conversation.id == earlier.1);
                assert_eq!(conversation.message_count, expected, "{conversation:?}");
            }
        }
    }

    /// A batch's pairs are looked up together, by pair: conversations that only share
    /// addresses with the batch's pairs (which a lookup by each column alone would find)
    /// are not theirs, and a pair whose addresses each belong to an existing conversation,
    /// with other partners, is a new conversation of its own.
    #[test]
    fn a_batch_uses_only_the_conversations_of_its_own_pairs() {
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let (a, b, c, d) = (
                "+12015550001",
                "+12015550002",
                "+12015550003",
                "+12015550004",
            );
            let ab = created(&insert_one(
                &mut conn,
                &outbound(content(a, b, "ab"), Some("p")),
            ))
            .1;
            let cd = created(&insert_one(
                &mut conn,
                &outbound(content(c, d, "cd"), Some("p")),
            ))
            .1;
            let news: Vec<NewOutbound> = [(a, d), (c, b), (b, a), (a, d)]
                .iter()
                .map(|(from, to)| outbound(content(from, to, "batch"), Some("p")))
                .collect();
            let conversations: Vec<i64> = insert_many(&mut conn, &news.iter().collect::<Vec<_>>())
                .iter()
                .map(|answer| created(answer).1)
                .collect();
            let [ad, cb, ba, ad_again] = conversations[..] else {
                panic!("four answers: {conversations:?}")
            };
            assert_eq!(ba, ab, "an existing pair keeps its conversation");
            assert_eq!(ad, ad_again, "one conversation per pair within a batch");
            let mut all = vec![ab, cd, ad, cb];
            all.sort_unstable();
            all.dedup();
            assert_eq!(
                all.len(),
                4,
                "pairs of known addresses are new conversations: {conversations:?}"
            );
        }
    }

    /// Two instances create the same new conversations at once: the second waits for the
    /// first's commit and reads its conversations back, one conversation per pair. (The
    /// second lists the pairs in the opposite order, but the first holds them all before
    /// the second starts, so this does not show that the sorted insert cannot deadlock.)
    #[test]
    fn on_postgres_two_batches_creating_the_same_conversations_share_them() {
        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            let mut first = db.pool.get().expect("connection");
            let news = new_messages(20, "+1201557");
            let reversed: Vec<NewOutbound> = news.iter().rev().cloned().collect();
            let pool = db.pool.clone();
            let (first_ids, second_ids) = std::thread::scope(|scope| {
                let mut second_ids = None;
                let first_ids = in_write_transaction(&mut first, |tx| {
                    let Tx::Postgres(c) = tx else {
                        unreachable!("a PostgreSQL connection")
                    };
                    let ours = postgres::insert_outbound_many(c, &news.iter().collect::<Vec<_>>())?;
                    let other = scope.spawn(|| {
                        let mut second = pool.get().expect("second connection");
                        insert_many(&mut second, &reversed.iter().collect::<Vec<_>>())
                    });
                    // Commit only once the other batch waits on our new conversations.
                    let mut watcher = PgConnection::establish(&url).expect("watcher connection");
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        if sessions_waiting_for_a_lock(&mut watcher) > 0 {
                            break;
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the second batch never waited"
                        );
                        std::thread::yield_now();
                    }
                    second_ids = Some(other);
                    Ok(ours)
                })
                .expect("first batch");
                let second_ids = second_ids.expect("started").join().expect("second batch");
                (first_ids, second_ids)
            });
            let conversation = |answers: &[OutboundStored]| -> Vec<i64> {
                answers.iter().map(|answer| created(answer).1).collect()
            };
            let mut theirs = conversation(&second_ids);
            theirs.reverse();
            assert_eq!(
                conversation(&first_ids),
                theirs,
                "the same conversation per pair"
            );
            let mut distinct = theirs.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), news.len());
        }
    }

    /// A batch's attempt records share one insert: each applies its own status, and one
    /// record for a message another instance holds fails the whole statement (the batch
    /// is then rerun record by record), never lands half.
    #[test]
    fn a_batch_of_attempt_records_applies_each_status_or_none() {
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let ids = insert_ids(&mut conn, &new_messages(5, "+1201555010"));
            let refused = [
                attempt(ids[0], 1, MessageStatus::Sent, "me"),
                attempt(ids[1], 1, MessageStatus::Sent, "someone else"),
            ];
            assert_eq!(
                record_many(&mut conn, &refused.iter().collect::<Vec<_>>()),
                Err(StoreError::Superseded)
            );
            assert_eq!(read(&mut conn, ids[0]).0.status, "queued", "nothing landed");

            let records = [
                attempt(ids[0], 1, MessageStatus::Sent, "me"),
                attempt(ids[1], 1, MessageStatus::Queued, "me"),
                attempt(ids[2], 1, MessageStatus::Failed, "me"),
                attempt(ids[3], 1, MessageStatus::Sent, "me"),
                // Two attempts of one message in one statement, the later one first: the
                // message ends with the later one's status whatever the order.
                attempt(ids[4], 2, MessageStatus::Sent, "me"),
                attempt(ids[4], 1, MessageStatus::Queued, "me"),
            ];
            let done =
                record_many(&mut conn, &records.iter().collect::<Vec<_>>()).expect("recorded");
            assert_eq!(done.len(), records.len());
            for ((record, _), id) in records.iter().zip(&ids).take(4) {
                let (view, attempts) = read(&mut conn, *id);
                assert_eq!(view.status, record.status.as_str());
                assert_eq!(attempts.len(), 1);
                assert_eq!(attempts[0].outcome, record.outcome);
            }
            let (view, attempts) = read(&mut conn, ids[4]);
            assert_eq!(view.status, "sent");
            assert_eq!(attempts.len(), 2);

            // A later attempt moves a queued message on; none changes a final status.
            let late = [
                attempt(ids[1], 2, MessageStatus::Sent, "me"),
                attempt(ids[3], 2, MessageStatus::Failed, "me"),
            ];
            record_many(&mut conn, &late.iter().collect::<Vec<_>>()).expect("recorded");
            assert_eq!(read(&mut conn, ids[1]).0.status, "sent");
            assert_eq!(
                read(&mut conn, ids[3]).0.status,
                "sent",
                "final stays final"
            );
        }
    }

    #[derive(QueryableByName)]
    struct Joined {
        #[diesel(sql_type = diesel::sql_types::Text)]
        joined: String,
    }

    /// A column's name and how a row to insert gives its value (`None` for NULL).
    type Column<R> = (&'static str, fn(&R) -> Option<String>);

    /// Asserts that `table`'s rows `ids` hold `rows`' values, column by column, in id
    /// order: each row's values are read joined by `|` (`~` for NULL), the same SQL on
    /// both backends.
    fn assert_stored<R>(
        conn: &mut DbConn,
        table: &str,
        columns: &[Column<R>],
        rows: &[R],
        ids: &[i64],
    ) {
        let read: Vec<String> = columns
            .iter()
            .map(|(name, _)| format!("coalesce(CAST({name} AS TEXT), '~')"))
            .collect();
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT {} AS joined FROM {table} WHERE id IN ({}) ORDER BY id",
            read.join(" || '|' || "),
            ids.join(", ")
        );
        let stored: Vec<String> = match conn {
            DbConn::Sqlite(c) => diesel::sql_query(sql).load::<Joined>(c),
            DbConn::Postgres(c) => diesel::sql_query(sql).load::<Joined>(c),
        }
        .expect("stored rows")
        .into_iter()
        .map(|row| row.joined)
        .collect();
        let expected: Vec<String> = rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|(_, value)| value(row).unwrap_or_else(|| "~".to_owned()))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        assert_eq!(stored, expected, "{table}");
    }

    /// A batch's rows go in together (on PostgreSQL one statement of one array per
    /// column, on SQLite statements of fixed sizes): every value lands in its own column
    /// of its own row, NULLs included. Each column holds a value no other column holds,
    /// so two swapped columns show.
    #[test]
    fn a_batch_insert_puts_every_value_in_its_own_column() {
        use super::super::dispatch::InsertAttempts;
        use super::super::rows::NewAttemptRow;
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let conversation = created(&insert_one(
                &mut conn,
                &outbound(content("+12015550001", "+12015550002", "x"), Some("p")),
            ))
            .1;
            let text = |column: &str, n: usize| format!("{column}-{n}");
            // Row 1 leaves every nullable column NULL; rows 0 and 2 fill them.
            let maybe = |column: &str, n: usize| (n != 1).then(|| text(column, n));
            let rows: Vec<NewMessageRow> = (0..3)
                .map(|n| NewMessageRow {
                    conversation_id: conversation,
                    direction: "outbound",
                    channel: text("channel", n),
                    from_addr: text("from", n),
                    to_addr: text("to", n),
                    body: text("body", n),
                    attachments: maybe("attachments", n),
                    timestamp: text("timestamp", n),
                    provider_name: maybe("provider", n),
                    status: ["queued", "sent", "failed"][n],
                    idempotency_key: maybe("key", n),
                    request_fingerprint: maybe("fingerprint", n),
                    provider_message_id: maybe("provider-id", n),
                    next_attempt_at: maybe("next", n),
                    created_at: text("created", n),
                    updated_at: text("updated", n),
                    lease_owner: maybe("owner", n),
                    lease_until: maybe("until", n),
                    subject: maybe("subject", n),
                    status_callback: maybe("callback", n),
                })
                .collect();
            let ids = match &mut conn {
                DbConn::Sqlite(c) => c.insert_messages(&rows),
                DbConn::Postgres(c) => c.insert_messages(&rows),
            }
            .expect("inserted");
            let columns: [Column<NewMessageRow>; 20] = [
                ("conversation_id", |r| Some(r.conversation_id.to_string())),
                ("direction", |r| Some(r.direction.to_owned())),
                ("channel", |r| Some(r.channel.clone())),
                ("from_addr", |r| Some(r.from_addr.clone())),
                ("to_addr", |r| Some(r.to_addr.clone())),
                ("body", |r| Some(r.body.clone())),
                ("attachments", |r| r.attachments.clone()),
                ("timestamp", |r| Some(r.timestamp.clone())),
                ("provider_name", |r| r.provider_name.clone()),
                ("status", |r| Some(r.status.to_owned())),
                ("idempotency_key", |r| r.idempotency_key.clone()),
                ("request_fingerprint", |r| r.request_fingerprint.clone()),
                ("provider_message_id", |r| r.provider_message_id.clone()),
                ("next_attempt_at", |r| r.next_attempt_at.clone()),
                ("created_at", |r| Some(r.created_at.clone())),
                ("updated_at", |r| Some(r.updated_at.clone())),
                ("lease_owner", |r| r.lease_owner.clone()),
                ("lease_until", |r| r.lease_until.clone()),
                ("subject", |r| r.subject.clone()),
                ("status_callback", |r| r.status_callback.clone()),
            ];
            assert_stored(&mut conn, "messages", &columns, &rows, &ids);

            // Attempt records of the queued message (row 0, leased by "owner-0").
            let records: Vec<NewAttemptRow> = (0..3)
                .map(|n| NewAttemptRow {
                    message_id: ids[0],
                    provider_name: text("provider", n),
                    attempt: i32::try_from(n + 1).expect("small"),
                    outcome: ["error", "timeout", "success"][n],
                    latency_ms: i64::try_from(100 + n).expect("small"),
                    error_code: maybe("code", n),
                    provider_message_id: maybe("their-id", n),
                    created_at: text("at", n),
                    message_status: [Some("queued"), None, Some("sent")][n],
                    next_attempt_at: maybe("retry", n),
                    recorded_by: [Some("owner-0".to_owned()), None, Some("owner-0".into())][n]
                        .clone(),
                })
                .collect();
            match &mut conn {
                DbConn::Sqlite(c) => c.insert_attempts(&records),
                DbConn::Postgres(c) => c.insert_attempts(&records),
            }
            .expect("recorded");
            let attempt_ids: Vec<i64> = {
                use super::super::schema::dispatch_attempts;
                let query = dispatch_attempts::table
                    .filter(dispatch_attempts::message_id.eq(ids[0]))
                    .order(dispatch_attempts::attempt)
                    .select(dispatch_attempts::id);
                match &mut conn {
                    DbConn::Sqlite(c) => query.load(c),
                    DbConn::Postgres(c) => query.load(c),
                }
                .expect("attempt ids")
            };
            let columns: [Column<NewAttemptRow>; 11] = [
                ("message_id", |r| Some(r.message_id.to_string())),
                ("provider_name", |r| Some(r.provider_name.clone())),
                ("attempt", |r| Some(r.attempt.to_string())),
                ("outcome", |r| Some(r.outcome.to_owned())),
                ("latency_ms", |r| Some(r.latency_ms.to_string())),
                ("error_code", |r| r.error_code.clone()),
                ("provider_message_id", |r| r.provider_message_id.clone()),
                ("created_at", |r| Some(r.created_at.clone())),
                ("message_status", |r| r.message_status.map(str::to_owned)),
                ("next_attempt_at", |r| r.next_attempt_at.clone()),
                ("recorded_by", |r| r.recorded_by.clone()),
            ];
            assert_stored(
                &mut conn,
                "dispatch_attempts",
                &columns,
                &records,
                &attempt_ids,
            );
            // The last record's status and provider id reached the message.
            let (view, _) = read(&mut conn, ids[0]);
            assert_eq!(view.status, "sent");
            assert_eq!(view.provider_message_id.as_deref(), Some("their-id-2"));
        }
    }

    /// A fixed statement with a parameter left unbound fails instead of running.
    #[test]
    fn on_postgres_a_fixed_statement_with_an_unbound_parameter_fails() {
        use super::super::backend::{BindFixed, FixedSql};
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let DbConn::Postgres(c) = &mut conn else {
                continue;
            };
            const SUM: &str = "SELECT CAST(? AS BIGINT) + CAST(? AS BIGINT) AS id";
            let sum = FixedSql(SUM)
                .bind::<diesel::sql_types::BigInt, _>(2_i64)
                .bind::<diesel::sql_types::BigInt, _>(3_i64)
                .load::<InsertedId>(c)
                .expect("both bound");
            assert_eq!(sum.first().map(|row| row.id), Some(5));
            let one_short = FixedSql(SUM)
                .bind::<diesel::sql_types::BigInt, _>(2_i64)
                .load::<InsertedId>(c);
            assert!(
                matches!(one_short, Err(diesel::result::Error::QueryBuilderError(_))),
                "ran with a parameter unbound: {:?}",
                one_short.map(|rows| rows.len())
            );
        }
    }

    /// A batch's inserts are kept prepared. On SQLite they are statements of a few fixed
    /// sizes, each prepared once per connection (see `for_cached_chunks!`): a batch of a
    /// count seen before, or made of sizes seen before, prepares nothing (an insert of a
    /// `Vec` of rows would be prepared anew at every batch). On PostgreSQL one statement
    /// of arrays takes any count, prepared at the first batch only.
    #[test]
    fn batch_inserts_are_prepared_once() {
        use diesel::connection::InstrumentationEvent;
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let cached = Arc::new(Mutex::new(Vec::<String>::new()));
            let log = cached.clone();
            let instrument = move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                    log.lock().expect("log").push(sql.replace('`', "\""));
                }
            };
            match &mut conn {
                DbConn::Sqlite(c) => c.set_instrumentation(instrument),
                DbConn::Postgres(c) => c.set_instrumentation(instrument),
            }
            let newly_cached = |table: &str| {
                let (quoted, plain) = (
                    format!("INSERT INTO \"{table}\" "),
                    format!("INSERT INTO {table} "),
                );
                let mut log = cached.lock().expect("log");
                let count = log
                    .iter()
                    .filter(|sql| sql.starts_with(&quoted) || sql.starts_with(&plain))
                    .count();
                log.clear();
                count
            };
            let sqlite = matches!(conn, DbConn::Sqlite(_));

            // 13 = 8 + 4 + 1: three statements on SQLite, each prepared now.
            let ids = insert_ids(&mut conn, &new_messages(13, "+1301555"));
            assert_eq!(newly_cached("messages"), if sqlite { 3 } else { 1 });
            insert_ids(&mut conn, &new_messages(13, "+1302555"));
            insert_ids(&mut conn, &new_messages(5, "+1303555"));
            assert_eq!(newly_cached("messages"), 0, "sizes 8, 4 and 1 are kept");
            insert_ids(&mut conn, &new_messages(2, "+1304555"));
            let two = newly_cached("messages");
            assert_eq!(two, usize::from(sqlite), "size 2 is new on SQLite only");

            let records: Vec<_> = ids
                .iter()
                .map(|id| attempt(*id, 1, MessageStatus::Queued, "me"))
                .collect();
            record_many(&mut conn, &records.iter().collect::<Vec<_>>()).expect("recorded");
            let prepared = newly_cached("dispatch_attempts");
            assert_eq!(prepared, if sqlite { 3 } else { 1 });
            let later: Vec<_> = ids
                .iter()
                .map(|id| attempt(*id, 2, MessageStatus::Sent, "me"))
                .collect();
            record_many(&mut conn, &later.iter().collect::<Vec<_>>()).expect("recorded");
            assert_eq!(newly_cached("dispatch_attempts"), 0);
            for id in ids {
                let (view, attempts) = read(&mut conn, id);
                assert_eq!((view.status.as_str(), attempts.len()), ("sent", 2));
            }
        }
    }

    #[derive(QueryableByName)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq_scan: i64,
    }

    /// PostgreSQL keeps a trigger function's plans for the session, and a transition table
    /// has no statistics: a plan made for a large first batch scanned the whole messages
    /// table at every later batch. A small batch after a large one must find its rows
    /// through an index.
    #[test]
    fn on_postgres_a_small_batch_after_a_large_one_reads_no_whole_table() {
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            if matches!(conn, DbConn::Sqlite(_)) {
                continue;
            }
            let news = new_messages(600, "+1201556");
            let ids = insert_ids(&mut conn, &news);
            let record = |id: &i64| attempt(*id, 1, MessageStatus::Sent, "me");
            let large: Vec<_> = ids[..597].iter().map(record).collect();
            record_many(&mut conn, &large.iter().collect::<Vec<_>>()).expect("recorded");

            let small: Vec<_> = ids[597..].iter().map(record).collect();
            let more = &news[..3];
            // The backend's counts not yet reported include earlier transactions': the
            // difference is the small batch's.
            let scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'messages'";
            let (before, after) = in_write_transaction(&mut conn, |tx| {
                let Tx::Postgres(c) = tx else {
                    unreachable!("a PostgreSQL connection")
                };
                let before = diesel::sql_query(scans).get_result::<Scans>(*c)?;
                postgres::insert_outbound_many(c, &more.iter().collect::<Vec<_>>())?;
                dispatch::postgres::record_attempts(c, &small.iter().collect::<Vec<_>>())?;
                let after = diesel::sql_query(scans).get_result::<Scans>(*c)?;
                Ok((before.seq_scan, after.seq_scan))
            })
            .expect("small batch");
            assert_eq!(
                after, before,
                "the small batch read the whole messages table"
            );
            assert_eq!(read(&mut conn, ids[599]).0.status, "sent");
        }
    }

    /// Two instances add messages to one conversation at once: a batch's insert must lock
    /// the conversation only as its update does, so that the other instance's foreign-key
    /// check of its own new message (FOR KEY SHARE) does not wait on it; with a stronger
    /// lock the two batches deadlocked, each holding what the other waited for. The batch's
    /// messages are later than the conversation's latest, so its trigger does lock the row.
    #[test]
    fn on_postgres_a_batch_leaves_its_conversations_free_to_reference() {
        for db in databases() {
            let mut first = db.pool.get().expect("connection");
            let DbConn::Postgres(_) = first else {
                continue;
            };
            let mut second = db.pool.get().expect("second connection");
            let (_, conversation) = created(&insert_one(
                &mut first,
                &outbound(
                    content("+12015550001", "+12015550002", "earlier"),
                    Some("p"),
                ),
            ));
            let news: Vec<NewOutbound> = (0..3)
                .map(|n| {
                    let mut later = content("+12015550001", "+12015550002", &format!("{n}"));
                    later.timestamp =
                        Timestamp::parse_rfc3339("2024-11-01T15:00:00Z").expect("valid");
                    outbound(later, Some("p"))
                })
                .collect();
            in_write_transaction(&mut first, |tx| {
                let Tx::Postgres(c) = tx else {
                    unreachable!("a PostgreSQL connection")
                };
                postgres::insert_outbound_many(c, &news.iter().collect::<Vec<_>>())?;
                let DbConn::Postgres(other) = &mut second else {
                    unreachable!("one pool, one backend")
                };
                let mut lock = |strength: &str| {
                    diesel::sql_query(format!(
                        "SELECT id FROM conversations WHERE id = {conversation} \
                         FOR {strength} NOWAIT"
                    ))
                    .execute(&mut **other)
                };
                assert!(
                    lock("NO KEY UPDATE").is_err(),
                    "the batch moved last_message_at on, so it holds the conversation's row"
                );
                lock("KEY SHARE").map_err(StoreError::from)
            })
            .expect("another transaction may reference the conversation meanwhile");
        }
    }

    /// Two instances add messages to one conversation at once: each counts into its own
    /// slot, so the second's batch neither waits for the first's commit nor loses a
    /// count, and the conversation's total is every message.
    #[test]
    fn on_postgres_two_writers_count_into_one_conversation_without_waiting() {
        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            let mut first = db.pool.get().expect("connection");
            let (_, conversation) = created(&insert_one(
                &mut first,
                &outbound(
                    content("+12015550001", "+12015550002", "earlier"),
                    Some("p"),
                ),
            ));
            let DbConn::Postgres(c) = &mut first else {
                unreachable!("a PostgreSQL connection")
            };
            let first_slot = backend_slot(c);
            // Writers whose pids share a slot wait for each other by design: pick another.
            let mut second = (0..100)
                .map(|_| PgConnection::establish(&url).expect("connection"))
                .find_map(|mut conn| (backend_slot(&mut conn) != first_slot).then_some(conn))
                .expect("a connection with a slot of its own");
            let batch = |n: usize| -> Vec<NewOutbound> {
                (0..n)
                    .map(|i| {
                        outbound(
                            content("+12015550002", "+12015550001", &format!("{i}")),
                            Some("p"),
                        )
                    })
                    .collect()
            };
            let (ours, theirs) = (batch(3), batch(5));
            in_write_transaction(&mut first, |tx| {
                let Tx::Postgres(c) = tx else {
                    unreachable!("a PostgreSQL connection")
                };
                postgres::insert_outbound_many(c, &ours.iter().collect::<Vec<_>>())?;
                second.transaction(|c| {
                    diesel::sql_query("SET LOCAL lock_timeout = '2s'").execute(c)?;
                    postgres::insert_outbound_many(c, &theirs.iter().collect::<Vec<_>>())
                })
            })
            .expect("the second writer's batch went through while the first's was open");
            let counted = match &mut first {
                DbConn::Postgres(c) => postgres::list_conversation_messages(
                    c,
                    conversation,
                    PageRequest {
                        page: 1,
                        page_size: 1,
                    },
                    None,
                ),
                DbConn::Sqlite(_) => unreachable!("a PostgreSQL connection"),
            }
            .expect("read");
            let Some(Bounded::Loaded(counted)) = counted else {
                panic!("the conversation: {counted:?}");
            };
            assert_eq!(counted.total, 1 + 3 + 5);
        }
    }

    /// Reverting the slotted counts folds every slot back into its conversation's
    /// `message_count`, and applying them again starts from that figure: no message is
    /// counted twice or lost either way.
    #[test]
    fn on_postgres_reverting_the_slotted_counts_keeps_every_count() {
        use diesel::migration::MigrationSource;
        use diesel::pg::Pg;
        use diesel_migrations::MigrationHarness;

        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            // Four backends whose pids fall in four slots.
            let mut slots_taken = Vec::new();
            let mut writers: Vec<PgConnection> = (0..100)
                .map(|_| PgConnection::establish(&url).expect("connection"))
                .filter_map(|mut conn| {
                    let slot = backend_slot(&mut conn);
                    (!slots_taken.contains(&slot)).then(|| {
                        slots_taken.push(slot);
                        conn
                    })
                })
                .take(4)
                .collect();
            assert_eq!(writers.len(), 4, "four backends in four slots");
            for (n, conn) in writers.iter_mut().enumerate() {
                let news: Vec<NewOutbound> = (0..=n)
                    .map(|i| {
                        outbound(
                            content("+12015550001", "+12015550002", &format!("{n}.{i}")),
                            Some("p"),
                        )
                    })
                    .collect();
                conn.transaction(|c| {
                    postgres::insert_outbound_many(c, &news.iter().collect::<Vec<_>>())
                })
                .expect("batch");
            }
            let slots: i64 = conversation_counts::table
                .count()
                .get_result(&mut writers[0])
                .expect("slots");
            assert_eq!(slots, 4, "each writer counted into its own slot");
            let total = |conn: &mut PgConnection| -> i64 {
                let page = postgres::list_conversations(
                    conn,
                    PageRequest {
                        page: 1,
                        page_size: 1,
                    },
                )
                .expect("list");
                page.items.first().expect("one conversation").message_count
            };
            assert_eq!(total(&mut writers[0]), 1 + 2 + 3 + 4);

            let mut conn = PgConnection::establish(&url).expect("connection");
            let migrations =
                MigrationSource::<Pg>::migrations(&crate::store::backend::POSTGRES_MIGRATIONS)
                    .expect("migrations");
            let slotted = migrations
                .iter()
                .position(|m| m.name().to_string().ends_with("conversation_counts"))
                .expect("the slotted counts are a migration");
            let (counts, later) = migrations[slotted..].split_first().expect("some");
            for migration in later.iter().rev() {
                conn.revert_migration(migration.as_ref())
                    .expect("revert a later migration");
            }
            conn.revert_migration(counts.as_ref()).expect("revert");
            let folded: i64 = conversations::table
                .select(conversations::message_count)
                .first(&mut conn)
                .expect("count");
            assert_eq!(
                folded, 10,
                "the slots were folded into the conversation's row"
            );
            for migration in &migrations[slotted..] {
                conn.run_migration(migration.as_ref()).expect("apply again");
            }
            assert_eq!(total(&mut conn), 10);
        }
    }

    /// PostgreSQL breaks a deadlock by failing one of its transactions with 40P01, which
    /// Diesel reports with no kind of its own: the store must call it a rolled-back
    /// transaction, which the writer runs again, and not a fault of the database.
    #[test]
    fn on_postgres_a_deadlock_is_a_rolled_back_transaction() {
        use diesel::connection::SimpleConnection;
        for db in databases() {
            let Some(url) = db.postgres_url() else {
                continue;
            };
            let mut setup = PgConnection::establish(&url).expect("connection");
            setup
                .batch_execute(
                    "CREATE TABLE deadlock_probe (id INTEGER PRIMARY KEY);
                     INSERT INTO deadlock_probe VALUES (1), (2);",
                )
                .expect("probe table");
            // Each holds one row and then asks for the other's: a circle the server breaks.
            // A thread that cannot hear of the other's row within the deadline goes on
            // anyway, so a failure shows as a failed assertion, never as a hang.
            let crossed = |mut conn: PgConnection,
                           (first, second): (i32, i32),
                           held: std::sync::mpsc::Sender<()>,
                           other_held: std::sync::mpsc::Receiver<()>|
             -> Result<(), StoreError> {
                conn.transaction::<_, diesel::result::Error, _>(|c| {
                    let touch = |c: &mut PgConnection, id: i32| {
                        diesel::sql_query(format!(
                            "UPDATE deadlock_probe SET id = id WHERE id = {id}"
                        ))
                        .execute(c)
                    };
                    touch(c, first)?;
                    let _ = held.send(());
                    let _ = other_held.recv_timeout(Duration::from_secs(10));
                    touch(c, second)?;
                    Ok(())
                })
                .map_err(StoreError::from)
            };
            let connect = || PgConnection::establish(&url).expect("connection");
            let (one_conn, other_conn) = (connect(), connect());
            let (one_held, one_heard) = std::sync::mpsc::channel();
            let (other_held, other_heard) = std::sync::mpsc::channel();
            let (one, other) = std::thread::scope(|scope| {
                let one = scope.spawn(|| crossed(one_conn, (1, 2), one_held, other_heard));
                let other = scope.spawn(|| crossed(other_conn, (2, 1), other_held, one_heard));
                (
                    one.join().expect("first thread"),
                    other.join().expect("second thread"),
                )
            });
            let failed: Vec<StoreError> =
                [one, other].into_iter().filter_map(Result::err).collect();
            assert!(
                matches!(failed[..], [StoreError::RolledBack(_)]),
                "one transaction rolled back, the other through: {failed:?}"
            );
        }
    }

    /// The rules the status update's row triggers keep, on both backends: a final status
    /// stays final (but for a retry's failed -> queued), and only a message with a
    /// callback URL gets a callback for its final status.
    #[test]
    fn final_statuses_stay_final_and_only_messages_with_a_url_get_callbacks() {
        use crate::store::schema::callbacks;
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let mut news = new_messages(3, "+1201555020");
            news[0].status_callback = Some("http://127.0.0.1:9/callback".into());
            let ids = insert_ids(&mut conn, &news);
            let records = [
                attempt(ids[0], 1, MessageStatus::Sent, "me"),
                attempt(ids[1], 1, MessageStatus::Sent, "me"),
                attempt(ids[2], 1, MessageStatus::Failed, "me"),
            ];
            record_many(&mut conn, &records.iter().collect::<Vec<_>>()).expect("recorded");

            let mut callbacks_of = |id: i64| -> i64 {
                let count = callbacks::table
                    .filter(callbacks::message_id.eq(id))
                    .count();
                match &mut conn {
                    DbConn::Sqlite(c) => count.get_result(&mut **c),
                    DbConn::Postgres(c) => count.get_result(&mut **c),
                }
                .expect("count")
            };
            assert_eq!((callbacks_of(ids[0]), callbacks_of(ids[1])), (1, 0));

            let requeue = |id: i64, retries: i32| {
                diesel::update(messages::table.find(id))
                    .set((messages::status.eq("queued"), messages::retries.eq(retries)))
            };
            let refused = match &mut conn {
                DbConn::Sqlite(c) => requeue(ids[1], 0).execute(&mut **c),
                DbConn::Postgres(c) => requeue(ids[1], 0).execute(&mut **c),
            };
            assert_eq!(
                refused.map_err(StoreError::from).map_err(|e| e.kind()),
                Err("refused"),
                "sent is final"
            );
            let retried = match &mut conn {
                DbConn::Sqlite(c) => requeue(ids[2], 1).execute(&mut **c),
                DbConn::Postgres(c) => requeue(ids[2], 1).execute(&mut **c),
            };
            assert_eq!(retried.ok(), Some(1), "a retry takes a failed message back");
        }
    }

    /// A receipt that named no message waits for one to carry its provider id, and is
    /// applied then, unless a receipt of the message's own came meanwhile (which is the
    /// later one); one older than an hour, or beyond the newest 100,000, is dropped.
    #[test]
    fn an_early_receipt_waits_for_its_message_and_yields_to_a_later_one() {
        fn receive(conn: &mut DbConn, sid: &str, status: DeliveryStatus) -> Option<i64> {
            receive_from(conn, ReceiptSource::Twilio, sid, status)
        }
        fn receive_from(
            conn: &mut DbConn,
            source: ReceiptSource,
            sid: &str,
            status: DeliveryStatus,
        ) -> Option<i64> {
            let receipt = DeliveryReceipt {
                source,
                provider_message_id: sid.into(),
                status,
                error_code: None,
            };
            in_write_transaction(conn, |tx| match tx {
                Tx::Sqlite(c) => sqlite::record_delivery(c, &receipt),
                Tx::Postgres(c) => postgres::record_delivery(c, &receipt),
            })
            .expect("receipt")
        }
        fn apply(conn: &mut DbConn) -> usize {
            in_write_transaction(conn, |tx| match tx {
                Tx::Sqlite(c) => sqlite::apply_early_receipts(c, &()),
                Tx::Postgres(c) => postgres::apply_early_receipts(c, &()),
            })
            .expect("apply")
        }
        fn name(conn: &mut DbConn, id: i64, sid: &str) {
            let named =
                diesel::update(messages::table.find(id)).set(messages::provider_message_id.eq(sid));
            match conn {
                DbConn::Sqlite(c) => named.execute(c),
                DbConn::Postgres(c) => named.execute(c),
            }
            .expect("named");
        }
        fn delivery(conn: &mut DbConn, id: i64) -> Option<String> {
            let query = messages::table.find(id).select(messages::delivery_status);
            match conn {
                DbConn::Sqlite(c) => query.first(c),
                DbConn::Postgres(c) => query.first(c),
            }
            .expect("delivery status")
        }
        fn waiting(conn: &mut DbConn) -> i64 {
            let query = early_receipts::table.count();
            match conn {
                DbConn::Sqlite(c) => query.get_result(c),
                DbConn::Postgres(c) => query.get_result(c),
            }
            .expect("count")
        }
        fn run(conn: &mut DbConn, sql: &str) {
            match conn {
                DbConn::Sqlite(c) => diesel::sql_query(sql).execute(c),
                DbConn::Postgres(c) => diesel::sql_query(sql).execute(c),
            }
            .expect("sql");
        }
        for db in databases() {
            let mut conn = db.pool.get().expect("connection");
            let new = |n| {
                outbound(
                    content("+12015550001", &format!("+1201555010{n}"), "hi"),
                    Some("p"),
                )
            };
            let a = created(&insert_one(&mut conn, &new(1))).0;
            let b = created(&insert_one(&mut conn, &new(2))).0;
            for (sid, status) in [
                ("SM-a", DeliveryStatus::Delivered),
                ("SM-b", DeliveryStatus::Delivered),
                ("SM-other", DeliveryStatus::Undelivered),
            ] {
                assert_eq!(receive(&mut conn, sid, status), None);
            }
            let from_sendgrid = ReceiptSource::SendGrid;
            assert_eq!(
                receive_from(&mut conn, from_sendgrid, "SG-x", DeliveryStatus::Delivered),
                None
            );
            assert_eq!(apply(&mut conn), 0, "no message names them yet");
            assert_eq!(waiting(&mut conn), 3, "SendGrid's are not kept");

            name(&mut conn, a, "SM-a");
            name(&mut conn, b, "SM-b");
            assert_eq!(
                receive(&mut conn, "SM-b", DeliveryStatus::Undelivered),
                Some(b)
            );
            assert_eq!(apply(&mut conn), 1);
            assert_eq!(delivery(&mut conn, a).as_deref(), Some("delivered"));
            assert_eq!(
                delivery(&mut conn, b).as_deref(),
                Some("undelivered"),
                "the later receipt stands"
            );
            assert_eq!(waiting(&mut conn), 1, "someone else's is kept");

            let hours_ago = Timestamp::now()
                .shifted(-2 * 60 * 60 * 1_000_000)
                .to_storage();
            run(
                &mut conn,
                &format!("UPDATE early_receipts SET received_at = '{hours_ago}'"),
            );
            assert_eq!(apply(&mut conn), 0);
            assert_eq!(waiting(&mut conn), 0, "dropped after an hour");

            let now = Timestamp::now().to_storage();
            let many = EARLY_RECEIPTS_KEPT + 5;
            run(
                &mut conn,
                &match db.postgres_url() {
                    Some(_) => format!(
                        "INSERT INTO early_receipts SELECT 'SM' || i, 'delivered', NULL, '{now}' \
                         FROM generate_series(1, {many}) AS i"
                    ),
                    None => format!(
                        "INSERT INTO early_receipts WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
                         SELECT i + 1 FROM n WHERE i < {many}) \
                         SELECT 'SM' || i, 'delivered', NULL, '{now}' FROM n"
                    ),
                },
            );
            apply(&mut conn);
            assert_eq!(waiting(&mut conn), EARLY_RECEIPTS_KEPT);
        }
    }
}
