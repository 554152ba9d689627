-- Integrity under races and faults: an attempt is recorded only by the instance that
-- holds its message's lease, a final status never changes, and SMS and MMS webhooks share
-- one provider-id space in the database itself.

ALTER TABLE dispatch_attempts ADD COLUMN recorded_by TEXT;

-- A frozen instance that wakes after another took its message over must not record.
CREATE TRIGGER dispatch_attempts_fenced BEFORE INSERT ON dispatch_attempts
WHEN NEW.recorded_by IS NOT NULL AND EXISTS (
    SELECT 1 FROM messages
    WHERE id = NEW.message_id AND lease_owner IS NOT NULL AND lease_owner <> NEW.recorded_by
)
BEGIN
    SELECT RAISE(ABORT, 'attempt superseded by another instance');
END;

-- Only a queued message takes the status an attempt leads to.
DROP TRIGGER dispatch_attempts_set_message_status;
CREATE TRIGGER dispatch_attempts_set_message_status AFTER INSERT ON dispatch_attempts
WHEN NEW.message_status IS NOT NULL
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt AND status = 'queued';
END;

CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
WHEN OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status
BEGIN
    SELECT RAISE(ABORT, 'a final status cannot change');
END;

DROP INDEX messages_inbound_provider_id;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (
    (CASE WHEN channel IN ('sms', 'mms') THEN 'sms' ELSE channel END), provider_message_id
) WHERE direction = 'inbound';
