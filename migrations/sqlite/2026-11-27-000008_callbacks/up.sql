-- Status callbacks (CONTRACT section 10): a durable outbox written by triggers in the same
-- transaction as the status change that causes each callback, and the one door back from
-- `failed` (a retry, counted in `retries`).

ALTER TABLE messages ADD COLUMN status_callback TEXT;
ALTER TABLE messages ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- The attempts made before the latest retry: each retry has max_attempts of its own.
ALTER TABLE messages ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;

CREATE TABLE callbacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    -- Stable across retries, so a receiver can drop a repeat: msg_ID_EVENT_RETRIES.
    webhook_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL CHECK (event IN ('sent', 'failed', 'delivered', 'undelivered')),
    url TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'given_up')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_result TEXT,
    lease_owner TEXT,
    lease_until TEXT
);
CREATE INDEX callbacks_due ON callbacks (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX callbacks_message ON callbacks (message_id);

CREATE TRIGGER messages_status_callback AFTER UPDATE OF status ON messages
WHEN NEW.status IN ('sent', 'failed') AND NEW.status <> OLD.status
    AND NEW.status_callback IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO callbacks (message_id, webhook_id, event, url, created_at, next_attempt_at)
    VALUES (NEW.id, 'msg_' || NEW.id || '_' || NEW.status || '_' || NEW.retries, NEW.status,
        NEW.status_callback, NEW.updated_at, NEW.updated_at);
END;

CREATE TRIGGER messages_delivery_callback AFTER UPDATE OF delivery_status ON messages
WHEN NEW.delivery_status IS NOT NULL AND NEW.status_callback IS NOT NULL
    AND (OLD.delivery_status IS NULL OR NEW.delivery_status <> OLD.delivery_status)
BEGIN
    INSERT OR IGNORE INTO callbacks (message_id, webhook_id, event, url, created_at, next_attempt_at)
    VALUES (NEW.id, 'msg_' || NEW.id || '_' || NEW.delivery_status || '_' || NEW.retries,
        NEW.delivery_status, NEW.status_callback, NEW.updated_at, NEW.updated_at);
END;

-- Final statuses stay final, but for the retry: `failed` back to `queued` with one more
-- retry counted.
DROP TRIGGER messages_final_status;
CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
WHEN OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status
    AND NOT (OLD.status = 'failed' AND NEW.status = 'queued' AND NEW.retries = OLD.retries + 1)
BEGIN
    SELECT RAISE(ABORT, 'a final status cannot change');
END;
