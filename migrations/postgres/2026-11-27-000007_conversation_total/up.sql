-- The same as migrations/sqlite/'s conversation-total step, with one row per writing
-- connection (`slot` = its backend pid, which no two live connections share): a single
-- row would be locked by each new conversation until its batch commits, and two
-- instances' batches, each waiting for a conversation row the other holds, could then
-- deadlock on it. No lock is shared this way; the total is the sum of the rows.
-- The lock keeps an instance of the previous version from creating a conversation
-- between the count and the trigger (it would never be counted).
LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE conversation_total (
    slot BIGINT PRIMARY KEY,
    total BIGINT NOT NULL
);
INSERT INTO conversation_total (slot, total) SELECT 0, COUNT(*) FROM conversations;

CREATE FUNCTION conversations_counted() RETURNS trigger AS $$
BEGIN
    INSERT INTO conversation_total (slot, total) VALUES (pg_backend_pid(), 1)
    ON CONFLICT (slot) DO UPDATE SET total = conversation_total.total + 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER conversations_counted AFTER INSERT ON conversations
FOR EACH ROW EXECUTE FUNCTION conversations_counted();
