-- No writer may add a message between the fold and the drop: the old function counts
-- into the conversation's row again from the commit on. Reads of messages go on until
-- the drop, which waits for them; a writer already inside a batch may deadlock with this
-- lock, and PostgreSQL then rolls one of the two back: stop the instances first, or run
-- the revert again.
LOCK TABLE messages, conversations, conversation_counts IN SHARE ROW EXCLUSIVE MODE;

CREATE OR REPLACE FUNCTION messages_count_in_conversations() RETURNS trigger AS $$
BEGIN
    PERFORM 1 FROM conversations
    WHERE id IN (SELECT conversation_id FROM new_messages)
    ORDER BY id FOR NO KEY UPDATE;
    UPDATE conversations AS c
    SET message_count = c.message_count + n.added,
        last_message_at = GREATEST(c.last_message_at, n.latest)
    FROM (SELECT conversation_id, count(*) AS added, max(timestamp) AS latest
          FROM new_messages GROUP BY conversation_id) AS n
    WHERE c.id = n.conversation_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

UPDATE conversations AS c
SET message_count = c.message_count + k.added
FROM (SELECT conversation_id, sum(added) AS added
      FROM conversation_counts GROUP BY conversation_id) AS k
WHERE c.id = k.conversation_id;
DROP TABLE conversation_counts;
