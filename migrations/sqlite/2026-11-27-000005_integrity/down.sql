DROP INDEX messages_inbound_provider_id;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (channel, provider_message_id)
    WHERE direction = 'inbound';
DROP TRIGGER messages_final_status;
DROP TRIGGER dispatch_attempts_set_message_status;
CREATE TRIGGER dispatch_attempts_set_message_status AFTER INSERT ON dispatch_attempts
WHEN NEW.message_status IS NOT NULL
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt;
END;
DROP TRIGGER dispatch_attempts_fenced;
ALTER TABLE dispatch_attempts DROP COLUMN recorded_by;
