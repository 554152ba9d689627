-- The two updates every message needs run as triggers of the inserts that cause them. A
-- trigger is compiled into its insert's prepared statement, which stays cached; an UPDATE
-- or an upsert issued on its own is parsed and planned again for every message.

-- Each attempt row says the status it led its message to (and when the next attempt is
-- due); the trigger applies it, unless a later attempt was recorded first.
ALTER TABLE dispatch_attempts ADD COLUMN message_status TEXT;
ALTER TABLE dispatch_attempts ADD COLUMN next_attempt_at TEXT;

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

-- Each message counts into its conversation, whose last_message_at is its latest message.
CREATE TRIGGER messages_count_in_conversation AFTER INSERT ON messages
BEGIN
    UPDATE conversations
    SET message_count = message_count + 1,
        last_message_at = max(last_message_at, NEW.timestamp)
    WHERE id = NEW.conversation_id;
END;
