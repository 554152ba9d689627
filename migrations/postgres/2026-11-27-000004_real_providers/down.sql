ALTER TABLE dispatch_attempts DROP COLUMN provider_message_id;
ALTER TABLE dispatch_attempts DROP CONSTRAINT dispatch_attempts_outcome_check;
ALTER TABLE dispatch_attempts ADD CONSTRAINT dispatch_attempts_outcome_check
    CHECK (outcome IN ('success', 'rate_limited', 'error', 'timeout'));
DROP INDEX messages_outbound_provider_id;
ALTER TABLE messages DROP COLUMN delivery_error_code;
ALTER TABLE messages DROP COLUMN delivery_status;
ALTER TABLE messages DROP COLUMN subject;
