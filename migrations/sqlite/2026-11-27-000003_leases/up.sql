-- Which instance works a queued message, and until when (PostgreSQL shares work between
-- instances with these; on SQLite one instance owns the file and they stay NULL).
ALTER TABLE messages ADD COLUMN lease_owner TEXT;
ALTER TABLE messages ADD COLUMN lease_until TEXT;
