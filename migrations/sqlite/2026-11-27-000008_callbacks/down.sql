DROP TRIGGER messages_final_status;
CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
WHEN OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status
BEGIN
    SELECT RAISE(ABORT, 'a final status cannot change');
END;
DROP TRIGGER messages_delivery_callback;
DROP TRIGGER messages_status_callback;
DROP TABLE callbacks;
ALTER TABLE messages DROP COLUMN retry_base;
ALTER TABLE messages DROP COLUMN retries;
ALTER TABLE messages DROP COLUMN status_callback;
