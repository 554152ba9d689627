-- The same triggers as migrations/sqlite/: the updates every message needs run inside the
-- inserts that cause them, so one code path serves both databases.

ALTER TABLE dispatch_attempts ADD COLUMN message_status TEXT;
ALTER TABLE dispatch_attempts ADD COLUMN next_attempt_at TEXT;

CREATE FUNCTION dispatch_attempts_set_message_status() RETURNS trigger AS $$
BEGIN
    UPDATE messages
    SET status = NEW.message_status,
        attempt_count = NEW.attempt,
        next_attempt_at = NEW.next_attempt_at,
        updated_at = NEW.created_at
    WHERE id = NEW.message_id AND attempt_count < NEW.attempt;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER dispatch_attempts_set_message_status AFTER INSERT ON dispatch_attempts
FOR EACH ROW WHEN (NEW.message_status IS NOT NULL)
EXECUTE FUNCTION dispatch_attempts_set_message_status();

CREATE FUNCTION messages_count_in_conversation() RETURNS trigger AS $$
BEGIN
    UPDATE conversations
    SET message_count = message_count + 1,
        last_message_at = GREATEST(last_message_at, NEW.timestamp)
    WHERE id = NEW.conversation_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_count_in_conversation AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION messages_count_in_conversation();
