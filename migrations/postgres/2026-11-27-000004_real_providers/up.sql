-- The same as migrations/sqlite/'s real-providers step.

ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN delivery_status TEXT
    CHECK (delivery_status IN ('delivered', 'undelivered'));
ALTER TABLE messages ADD COLUMN delivery_error_code TEXT;
CREATE INDEX messages_outbound_provider_id ON messages (provider_message_id)
    WHERE direction = 'outbound' AND provider_message_id IS NOT NULL;

ALTER TABLE dispatch_attempts DROP CONSTRAINT dispatch_attempts_outcome_check;
ALTER TABLE dispatch_attempts ADD CONSTRAINT dispatch_attempts_outcome_check
    CHECK (outcome IN ('success', 'rate_limited', 'error', 'timeout', 'rejected'));
ALTER TABLE dispatch_attempts ADD COLUMN provider_message_id TEXT;

CREATE OR REPLACE FUNCTION dispatch_attempts_set_message_status() RETURNS trigger AS $$
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        provider_message_id = coalesce(NEW.provider_message_id, provider_message_id),
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt AND status = 'queued';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
