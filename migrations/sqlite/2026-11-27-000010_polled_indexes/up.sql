-- Indexes for the queries that run on a timer, so that their cost stays flat however
-- much the tables hold. Claims (at start, and the lease keeper's sweep every few seconds)
-- and the release at a graceful stop look for queued messages in id order: with no index
-- that starts from `status`, SQLite walked the whole table by rowid, 2.6 s a sweep at
-- 10 M messages, on the one writer, while every 202 waited. The callback worker's claim
-- (every 200 ms) looks for pending callbacks in id order, and the outbox keeps every
-- callback ever made. Queued messages and pending callbacks are few, so both stay small.
-- The queries name the values in their SQL (`dispatch::is_queued`): a bound value would
-- leave the partial indexes unused.
CREATE INDEX messages_queued ON messages (id) WHERE status = 'queued';
CREATE INDEX callbacks_pending ON callbacks (id) WHERE state = 'pending';
