CREATE INDEX messages_queued_due ON messages (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX messages_queued_lease ON messages (lease_until, id) WHERE status = 'queued';
