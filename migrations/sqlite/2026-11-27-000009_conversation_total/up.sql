-- The `total` of GET /api/conversations, kept as conversations are created, so that a
-- page costs the same with 50,000 conversations as with 5 (a COUNT(*) on every page grew
-- with the table). Conversations are never deleted, so an insert trigger is all it takes.
-- The total is the sum over `slot`s: SQLite has one writer and uses slot 1 alone;
-- PostgreSQL gives each writing connection its own (migrations/postgres/).
CREATE TABLE conversation_total (
    slot BIGINT PRIMARY KEY,
    total BIGINT NOT NULL
);
INSERT INTO conversation_total (slot, total) SELECT 1, COUNT(*) FROM conversations;

CREATE TRIGGER conversations_counted AFTER INSERT ON conversations
BEGIN
    UPDATE conversation_total SET total = total + 1 WHERE slot = 1;
END;
