-- The same as migrations/sqlite/'s `drop_unread_queue_index` step, for both of the queue's
-- indexes that no query reads here: claims, the sweep and the release at a stop read queued messages in
-- id order through `messages_queued` (their plans use it), and a message's next attempt is
-- timed by its provider, not polled for. Every new message still paid for both, an entry
-- in each inserted with the message and left behind when its first attempt set its status.
DROP INDEX messages_queued_due;
DROP INDEX messages_queued_lease;
