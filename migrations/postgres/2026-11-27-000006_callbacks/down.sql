CREATE OR REPLACE FUNCTION messages_final_status() RETURNS trigger AS $$
BEGIN
    IF OLD.status IN ('sent', 'failed', 'received') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'a final status cannot change';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER messages_callbacks ON messages;
DROP FUNCTION messages_callbacks();
DROP TABLE callbacks;
ALTER TABLE messages DROP COLUMN retry_base;
ALTER TABLE messages DROP COLUMN retries;
ALTER TABLE messages DROP COLUMN status_callback;
