//! Diesel row types. They stay inside `store/`; callers get the views of `messages.rs`.

use diesel::prelude::*;

use super::schema::{conversations, dispatch_attempts, messages};

/// `None` inserts NULL (not "leave the column out"), so the statement text is always the
/// same and Diesel can keep it prepared. The new-row types own their values: a
/// multi-row insert of a fixed size is kept prepared only when its rows' type is
/// `'static` (Diesel names the statement by that type; see `for_cached_chunks!`).
#[derive(Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub(super) struct NewMessageRow {
    pub conversation_id: i64,
    pub direction: &'static str,
    pub channel: String,
    pub from_addr: String,
    pub to_addr: String,
    pub body: String,
    pub attachments: Option<String>,
    pub timestamp: String,
    pub provider_name: Option<String>,
    pub status: &'static str,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
    pub provider_message_id: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
    pub subject: Option<String>,
    pub status_callback: Option<String>,
}

/// A dispatch attempt with the message status it leads to (applied by a trigger).
#[derive(Insertable)]
#[diesel(table_name = dispatch_attempts, treat_none_as_default_value = false)]
pub(super) struct NewAttemptRow {
    pub message_id: i64,
    pub provider_name: String,
    pub attempt: i32,
    pub outcome: &'static str,
    pub latency_ms: i64,
    pub error_code: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: String,
    pub message_status: Option<&'static str>,
    pub next_attempt_at: Option<String>,
    pub recorded_by: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = conversations)]
pub(super) struct NewConversationRow<'a> {
    pub participant_a: &'a str,
    pub participant_b: &'a str,
    pub message_count: i64,
    pub created_at: &'a str,
    pub last_message_at: &'a str,
}

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = messages)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(super) struct MessageRow {
    pub id: i64,
    pub conversation_id: i64,
    pub direction: String,
    pub channel: String,
    pub from_addr: String,
    pub to_addr: String,
    pub body: String,
    pub attachments: Option<String>,
    pub timestamp: String,
    pub provider_name: Option<String>,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub subject: Option<String>,
    pub provider_message_id: Option<String>,
    pub delivery_status: Option<String>,
    pub delivery_error_code: Option<String>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = conversations)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(super) struct ConversationRow {
    pub id: i64,
    pub participant_a: String,
    pub participant_b: String,
    pub message_count: i64,
    pub last_message_at: String,
}

/// Also read from PostgreSQL's `json_build_array` of the same columns, in this order.
#[derive(Queryable, Selectable, serde::Deserialize)]
#[diesel(table_name = dispatch_attempts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(super) struct AttemptRow {
    pub attempt: i32,
    pub provider_name: String,
    pub outcome: String,
    pub latency_ms: i64,
    pub error_code: Option<String>,
    pub created_at: String,
}
