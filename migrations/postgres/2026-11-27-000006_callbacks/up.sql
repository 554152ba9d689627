-- The same as migrations/sqlite/'s callbacks step.

ALTER TABLE messages ADD COLUMN status_callback TEXT;
ALTER TABLE messages ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- The attempts made before the latest retry: each retry has max_attempts of its own.
ALTER TABLE messages ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;

CREATE TABLE callbacks (
    id BIGSERIAL PRIMARY KEY,
    message_id BIGINT NOT NULL REFERENCES messages (id),
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

CREATE FUNCTION messages_callbacks() RETURNS trigger AS $$
BEGIN
    IF NEW.status_callback IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.status IN ('sent', 'failed') AND NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO callbacks (message_id, webhook_id, event, url, created_at, next_attempt_at)
        VALUES (NEW.id, 'msg_' || NEW.id || '_' || NEW.status || '_' || NEW.retries, NEW.status,
            NEW.status_callback, NEW.updated_at, NEW.updated_at)
        ON CONFLICT (webhook_id) DO NOTHING;
    END IF;
    IF NEW.delivery_status IS NOT NULL
        AND NEW.delivery_status IS DISTINCT FROM OLD.delivery_status THEN
        INSERT INTO callbacks (message_id, webhook_id, event, url, created_at, next_attempt_at)
        VALUES (NEW.id, 'msg_' || NEW.id || '_' || NEW.delivery_status || '_' || NEW.retries,
            NEW.delivery_status, NEW.status_callback, NEW.updated_at, NEW.updated_at)
        ON CONFLICT (webhook_id) DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_callbacks AFTER UPDATE OF status, delivery_status ON messages
FOR EACH ROW EXECUTE FUNCTION messages_callbacks();

CREATE OR REPLACE FUNCTION messages_final_status() RETURNS trigger AS $$
BEGIN
    IF OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status
        AND NOT (OLD.status = 'failed' AND NEW.status = 'queued'
                 AND NEW.retries = OLD.retries + 1) THEN
        RAISE EXCEPTION 'a final status cannot change';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
