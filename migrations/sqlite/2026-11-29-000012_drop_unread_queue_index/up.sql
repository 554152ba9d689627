-- `messages_queued_due` (next_attempt_at, id) WHERE status = 'queued' serves no query:
-- claims, the sweep and the release at a stop read queued messages in id order through
-- `messages_queued`, and a message's next attempt is timed by its provider, not polled
-- for. Every new message still paid for it on the one writer: an entry inserted with the
-- message and deleted again when its first attempt sets its status.
DROP INDEX messages_queued_due;
