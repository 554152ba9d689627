-- The rebuilt tables' constraints allow exactly what the lists did, so they stay; the
-- final-status rule gets its list back.
BEGIN IMMEDIATE;
DROP TRIGGER messages_final_status;
CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
WHEN OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status
    AND NOT (OLD.status = 'failed' AND NEW.status = 'queued' AND NEW.retries = OLD.retries + 1)
BEGIN
    SELECT RAISE(ABORT, 'a final status cannot change');
END;
COMMIT;
