DROP INDEX callbacks_pending;
DROP INDEX messages_queued;
