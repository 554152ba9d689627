DROP TRIGGER messages_count_in_conversation ON messages;
DROP FUNCTION messages_count_in_conversation();
DROP TRIGGER dispatch_attempts_set_message_status ON dispatch_attempts;
DROP FUNCTION dispatch_attempts_set_message_status();
ALTER TABLE dispatch_attempts DROP COLUMN next_attempt_at;
ALTER TABLE dispatch_attempts DROP COLUMN message_status;
