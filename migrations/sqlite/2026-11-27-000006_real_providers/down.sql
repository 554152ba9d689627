-- Not reversible in place: the rebuilt table keeps `rejected` rows. Drop what was added.
DROP INDEX messages_outbound_provider_id;
ALTER TABLE messages DROP COLUMN delivery_error_code;
ALTER TABLE messages DROP COLUMN delivery_status;
ALTER TABLE messages DROP COLUMN subject;
