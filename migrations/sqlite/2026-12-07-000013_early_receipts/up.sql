-- Delivery receipts that named no message when they came: a receipt can overtake the
-- record of the attempt it follows (the record retrying after a database fault, or being
-- written by another instance). The lease keeper applies each to its message once the
-- record has landed, and drops it after an hour, or beyond the newest 100,000.
CREATE TABLE early_receipts (
    provider_message_id TEXT PRIMARY KEY,
    delivery_status TEXT NOT NULL CHECK (delivery_status IN ('delivered', 'undelivered')),
    delivery_error_code TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX early_receipts_received ON early_receipts (received_at);
