CREATE INDEX messages_queued_due ON messages (next_attempt_at, id) WHERE status = 'queued';
