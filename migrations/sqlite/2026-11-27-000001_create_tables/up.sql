-- Timestamps are fixed-width UTC RFC 3339 text ("2024-11-01T14:00:00.000000Z"), so text
-- order is time order and an operator can read them as they are.

CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- the unordered pair, smaller address first, emails lower-cased
    participant_a TEXT NOT NULL,
    participant_b TEXT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_message_at TEXT NOT NULL
);
CREATE UNIQUE INDEX conversations_participants ON conversations (participant_a, participant_b);
CREATE INDEX conversations_recent ON conversations (last_message_at DESC, id DESC);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    direction TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    -- no CHECK on channel: a row with an unknown channel must be representable so that
    -- dispatch can refuse it as an invalid route
    channel TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    to_addr TEXT NOT NULL,
    body TEXT NOT NULL,
    attachments TEXT,                       -- JSON array; NULL when the client sent null
    timestamp TEXT NOT NULL,
    provider_name TEXT,                     -- NULL only when no provider served the channel
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'received')),
    idempotency_key TEXT,
    request_fingerprint TEXT,               -- digest of the request that first used the key
    provider_message_id TEXT,               -- inbound: messaging_provider_id or xillio_id
    attempt_count INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,                   -- when a queued message is next due
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX messages_conversation_time ON messages (conversation_id, timestamp, id);
CREATE INDEX messages_queued_due ON messages (next_attempt_at, id) WHERE status = 'queued';
CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (channel, provider_message_id)
    WHERE direction = 'inbound';

CREATE TABLE dispatch_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    provider_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'rate_limited', 'error', 'timeout')),
    latency_ms BIGINT NOT NULL,
    error_code TEXT,                        -- "500", "429", "timeout"; NULL on success
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX dispatch_attempts_message ON dispatch_attempts (message_id, attempt);
