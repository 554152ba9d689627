-- The same tables as migrations/sqlite/, for several instances sharing one database.
-- Timestamps are fixed-width UTC RFC 3339 text, as on SQLite, so one code path serves both
-- and text order is time order.

CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    participant_a TEXT NOT NULL,
    participant_b TEXT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_message_at TEXT NOT NULL
);
CREATE UNIQUE INDEX conversations_participants ON conversations (participant_a, participant_b);
CREATE INDEX conversations_recent ON conversations (last_message_at DESC, id DESC);

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    direction TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    channel TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    to_addr TEXT NOT NULL,
    body TEXT NOT NULL,
    attachments TEXT,
    timestamp TEXT NOT NULL,
    provider_name TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'received')),
    idempotency_key TEXT,
    request_fingerprint TEXT,
    provider_message_id TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- the instance working this queued message, and until when (renewed while it works)
    lease_owner TEXT,
    lease_until TEXT
);
CREATE INDEX messages_conversation_time ON messages (conversation_id, timestamp, id);
CREATE INDEX messages_queued_due ON messages (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX messages_queued_lease ON messages (lease_until, id) WHERE status = 'queued';
CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (channel, provider_message_id)
    WHERE direction = 'inbound';

CREATE TABLE dispatch_attempts (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    provider_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'rate_limited', 'error', 'timeout')),
    latency_ms BIGINT NOT NULL,
    error_code TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX dispatch_attempts_message ON dispatch_attempts (message_id, attempt);

CREATE TABLE readiness_probe (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL
);
