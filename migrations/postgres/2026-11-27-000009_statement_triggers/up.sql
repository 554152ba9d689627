-- A batch's messages and attempt records arrive in multi-row inserts: the updates they
-- cause run once per statement over its new rows (transition tables) instead of once per
-- row, which on this server cost a statement start each (SQLite's triggers stay per row:
-- there a statement costs no round trip and no executor start).
-- Rows are locked in id order first, so two instances' batches never wait on each other
-- in a circle however their rows interleave. Conversations take the lock their UPDATE
-- takes anyway (FOR NO KEY UPDATE), which leaves every other transaction's foreign-key
-- check of a new message (FOR KEY SHARE) free: with FOR UPDATE two instances' batches into
-- one conversation each held the key-share lock the other's FOR UPDATE waited for.
-- A transition table has no statistics and the plan made at a function's first call is
-- kept for the session: one made for a large batch, or on a nearly empty table, scanned the
-- whole messages table at every later batch. These statements touch a batch's rows, which
-- only an index finds cheaply, so each function plans with index lookups only.

DROP TRIGGER messages_count_in_conversation ON messages;

CREATE FUNCTION messages_count_in_conversations() RETURNS trigger AS $$
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

CREATE TRIGGER messages_count_in_conversations AFTER INSERT ON messages
REFERENCING NEW TABLE AS new_messages
FOR EACH STATEMENT EXECUTE FUNCTION messages_count_in_conversations();

DROP TRIGGER dispatch_attempts_fenced ON dispatch_attempts;
DROP TRIGGER dispatch_attempts_set_message_status ON dispatch_attempts;

-- The fence first: FOR SHARE waits for a claim that is moving a lease at this moment, so
-- the check sees the owner the claim leaves behind; one record for a message another
-- instance holds refuses the whole statement (the batch is then rerun record by record).
-- Then each message takes the status of its latest attempt in the statement, unless a
-- later attempt was recorded before or its status is final.
CREATE FUNCTION dispatch_attempts_apply() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM (SELECT id, lease_owner FROM messages
              WHERE id IN (SELECT message_id FROM new_attempts WHERE recorded_by IS NOT NULL)
              ORDER BY id FOR SHARE) AS held
        JOIN new_attempts AS a ON a.message_id = held.id
        WHERE a.recorded_by IS NOT NULL AND held.lease_owner IS NOT NULL
          AND held.lease_owner <> a.recorded_by
    ) THEN
        RAISE EXCEPTION 'attempt superseded by another instance';
    END IF;
    UPDATE messages AS m
    SET status = a.message_status,
        attempt_count = a.attempt,
        next_attempt_at = a.next_attempt_at,
        provider_message_id = coalesce(a.provider_message_id, m.provider_message_id),
        updated_at = a.created_at
    FROM (SELECT DISTINCT ON (message_id) message_id, attempt, message_status,
                 next_attempt_at, provider_message_id, created_at
          FROM new_attempts
          WHERE message_status IS NOT NULL
          ORDER BY message_id, attempt DESC) AS a
    WHERE m.id = a.message_id AND m.attempt_count < a.attempt AND m.status = 'queued';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

CREATE TRIGGER dispatch_attempts_apply AFTER INSERT ON dispatch_attempts
REFERENCING NEW TABLE AS new_attempts
FOR EACH STATEMENT EXECUTE FUNCTION dispatch_attempts_apply();

-- The row triggers a status update still fires are called only for the rows they act on
-- (a WHEN clause is evaluated without calling into PL/pgSQL): the final-status rule for a
-- row leaving a final status, the callbacks for a message that has a callback URL.
DROP TRIGGER messages_final_status ON messages;
CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
FOR EACH ROW WHEN (OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status)
EXECUTE FUNCTION messages_final_status();

DROP TRIGGER messages_callbacks ON messages;
CREATE TRIGGER messages_callbacks AFTER UPDATE OF status, delivery_status ON messages
FOR EACH ROW WHEN (NEW.status_callback IS NOT NULL)
EXECUTE FUNCTION messages_callbacks();
