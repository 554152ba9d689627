//! Diesel's view of the tables in `migrations/sqlite/` and `migrations/postgres/` (the
//! same tables on both but `conversation_counts`, PostgreSQL's only); kept by hand, in
//! step with them.

diesel::table! {
    conversations (id) {
        id -> BigInt,
        participant_a -> Text,
        participant_b -> Text,
        message_count -> BigInt,
        created_at -> Text,
        last_message_at -> Text,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        conversation_id -> BigInt,
        direction -> Text,
        channel -> Text,
        from_addr -> Text,
        to_addr -> Text,
        body -> Text,
        attachments -> Nullable<Text>,
        timestamp -> Text,
        provider_name -> Nullable<Text>,
        status -> Text,
        idempotency_key -> Nullable<Text>,
        request_fingerprint -> Nullable<Text>,
        provider_message_id -> Nullable<Text>,
        attempt_count -> Integer,
        next_attempt_at -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Text>,
        subject -> Nullable<Text>,
        delivery_status -> Nullable<Text>,
        delivery_error_code -> Nullable<Text>,
        status_callback -> Nullable<Text>,
        retries -> Integer,
        retry_base -> Integer,
    }
}

diesel::table! {
    dispatch_attempts (id) {
        id -> BigInt,
        message_id -> BigInt,
        provider_name -> Text,
        attempt -> Integer,
        outcome -> Text,
        latency_ms -> BigInt,
        error_code -> Nullable<Text>,
        created_at -> Text,
        message_status -> Nullable<Text>,
        next_attempt_at -> Nullable<Text>,
        recorded_by -> Nullable<Text>,
        provider_message_id -> Nullable<Text>,
    }
}

diesel::table! {
    readiness_probe (id) {
        id -> BigInt,
        checked_at -> Text,
    }
}

diesel::table! {
    /// How many conversations exist: the sum of `total`, kept by an insert trigger (one
    /// row on SQLite, one per writing connection on PostgreSQL).
    conversation_total (slot) {
        slot -> BigInt,
        total -> BigInt,
    }
}

diesel::table! {
    /// PostgreSQL only: messages counted into a conversation since the migration
    /// `2026-11-28-000010_conversation_counts`, one row per writing connection's slot; a
    /// conversation's count is its `message_count` plus its rows' `added`. SQLite counts
    /// into `message_count` itself.
    conversation_counts (conversation_id, slot) {
        conversation_id -> BigInt,
        slot -> Integer,
        added -> BigInt,
    }
}

diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(dispatch_attempts -> messages (message_id));
diesel::table! {
    early_receipts (provider_message_id) {
        provider_message_id -> Text,
        delivery_status -> Text,
        delivery_error_code -> Nullable<Text>,
        received_at -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    conversations,
    messages,
    dispatch_attempts,
    readiness_probe,
    early_receipts
);

diesel::table! {
    breaker_overrides (provider_name) {
        provider_name -> Text,
        state -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    callbacks (id) {
        id -> BigInt,
        message_id -> BigInt,
        webhook_id -> Text,
        event -> Text,
        url -> Text,
        created_at -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> Text,
        last_result -> Nullable<Text>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Text>,
    }
}

diesel::joinable!(callbacks -> messages (message_id));
