-- Real providers: the provider's id of an outbound message (Twilio's sid, SendGrid's
-- X-Message-Id), its delivery receipt, an email's subject, and the `rejected` outcome.

ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN delivery_status TEXT
    CHECK (delivery_status IN ('delivered', 'undelivered'));
ALTER TABLE messages ADD COLUMN delivery_error_code TEXT;
-- Receipts find their message by the provider's id.
CREATE INDEX messages_outbound_provider_id ON messages (provider_message_id)
    WHERE direction = 'outbound' AND provider_message_id IS NOT NULL;

-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with `rejected`
-- allowed and the provider's id of a successful attempt, then its index and triggers.
CREATE TABLE dispatch_attempts_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    provider_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL
        CHECK (outcome IN ('success', 'rate_limited', 'error', 'timeout', 'rejected')),
    latency_ms BIGINT NOT NULL,
    error_code TEXT,
    created_at TEXT NOT NULL,
    message_status TEXT,
    next_attempt_at TEXT,
    recorded_by TEXT,
    provider_message_id TEXT
);
INSERT INTO dispatch_attempts_new (id, message_id, provider_name, attempt, outcome, latency_ms,
    error_code, created_at, message_status, next_attempt_at, recorded_by)
SELECT id, message_id, provider_name, attempt, outcome, latency_ms, error_code, created_at,
    message_status, next_attempt_at, recorded_by
FROM dispatch_attempts;
DROP TABLE dispatch_attempts;
ALTER TABLE dispatch_attempts_new RENAME TO dispatch_attempts;
CREATE UNIQUE INDEX dispatch_attempts_message ON dispatch_attempts (message_id, attempt);

CREATE TRIGGER dispatch_attempts_fenced BEFORE INSERT ON dispatch_attempts
WHEN NEW.recorded_by IS NOT NULL AND EXISTS (
    SELECT 1 FROM messages
    WHERE id = NEW.message_id AND lease_owner IS NOT NULL AND lease_owner <> NEW.recorded_by
)
BEGIN
    SELECT RAISE(ABORT, 'attempt superseded by another instance');
END;

CREATE TRIGGER dispatch_attempts_set_message_status AFTER INSERT ON dispatch_attempts
WHEN NEW.message_status IS NOT NULL
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        provider_message_id = coalesce(NEW.provider_message_id, provider_message_id),
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt AND status = 'queued';
END;
