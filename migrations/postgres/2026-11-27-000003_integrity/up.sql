-- The same rules as migrations/sqlite/'s integrity step: attempts fenced by the lease,
-- final statuses final, one provider-id space for SMS and MMS webhooks.

ALTER TABLE dispatch_attempts ADD COLUMN recorded_by TEXT;

-- FOR SHARE waits for a claim that is moving the lease at this moment, so the check sees
-- the owner the claim leaves behind.
CREATE FUNCTION dispatch_attempts_fenced() RETURNS trigger AS $$
DECLARE
    owner TEXT;
BEGIN
    SELECT lease_owner INTO owner FROM messages WHERE id = NEW.message_id FOR SHARE;
    IF owner IS NOT NULL AND owner <> NEW.recorded_by THEN
        RAISE EXCEPTION 'attempt superseded by another instance';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER dispatch_attempts_fenced BEFORE INSERT ON dispatch_attempts
FOR EACH ROW WHEN (NEW.recorded_by IS NOT NULL)
EXECUTE FUNCTION dispatch_attempts_fenced();

CREATE OR REPLACE FUNCTION dispatch_attempts_set_message_status() RETURNS trigger AS $$
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt AND status = 'queued';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION messages_final_status() RETURNS trigger AS $$
BEGIN
    IF OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'a final status cannot change';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
FOR EACH ROW EXECUTE FUNCTION messages_final_status();

-- Before the index can hold, earlier races may have stored one SMS/MMS id twice: the
-- later copies keep their rows, their id marked so that the index accepts them.
UPDATE messages AS m
SET provider_message_id = m.provider_message_id || '#duplicate-' || m.id
WHERE m.direction = 'inbound' AND m.channel IN ('sms', 'mms') AND EXISTS (
    SELECT 1 FROM messages AS o
    WHERE o.direction = 'inbound' AND o.channel IN ('sms', 'mms')
      AND o.provider_message_id = m.provider_message_id AND o.id < m.id
);

DROP INDEX messages_inbound_provider_id;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (
    (CASE WHEN channel IN ('sms', 'mms') THEN 'sms' ELSE channel END), provider_message_id
) WHERE direction = 'inbound';
