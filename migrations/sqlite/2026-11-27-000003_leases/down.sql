ALTER TABLE messages DROP COLUMN lease_until;
ALTER TABLE messages DROP COLUMN lease_owner;
