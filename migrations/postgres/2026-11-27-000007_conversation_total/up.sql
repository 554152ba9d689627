-- The same as migrations/sqlite/'s conversation-total step. A new conversation holds the
-- counter's row lock until its transaction commits; new conversations are rare beside new
-- messages, which never touch it.
CREATE TABLE conversation_total (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    total BIGINT NOT NULL
);
INSERT INTO conversation_total (id, total) SELECT 1, COUNT(*) FROM conversations;

CREATE FUNCTION conversations_counted() RETURNS trigger AS $$
BEGIN
    UPDATE conversation_total SET total = total + 1 WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER conversations_counted AFTER INSERT ON conversations
FOR EACH ROW EXECUTE FUNCTION conversations_counted();
