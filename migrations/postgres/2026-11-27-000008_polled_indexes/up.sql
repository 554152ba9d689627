-- The same as migrations/sqlite/'s polled-indexes step: claims read queued messages and
-- pending callbacks in id order, and these give them that order from the few rows that
-- qualify, whatever the tables hold.
CREATE INDEX messages_queued ON messages (id) WHERE status = 'queued';
CREATE INDEX callbacks_pending ON callbacks (id) WHERE state = 'pending';
