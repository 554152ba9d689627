DROP INDEX messages_inbound_provider_id;
CREATE UNIQUE INDEX messages_inbound_provider_id ON messages (channel, provider_message_id)
    WHERE direction = 'inbound';
DROP TRIGGER messages_final_status ON messages;
DROP FUNCTION messages_final_status();
DROP TRIGGER dispatch_attempts_fenced ON dispatch_attempts;
DROP FUNCTION dispatch_attempts_fenced();
ALTER TABLE dispatch_attempts DROP COLUMN recorded_by;
