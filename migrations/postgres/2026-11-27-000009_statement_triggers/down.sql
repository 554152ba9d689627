DROP TRIGGER messages_callbacks ON messages;
CREATE TRIGGER messages_callbacks AFTER UPDATE OF status, delivery_status ON messages
FOR EACH ROW EXECUTE FUNCTION messages_callbacks();
DROP TRIGGER messages_final_status ON messages;
CREATE TRIGGER messages_final_status BEFORE UPDATE OF status ON messages
FOR EACH ROW EXECUTE FUNCTION messages_final_status();

DROP TRIGGER dispatch_attempts_apply ON dispatch_attempts;
DROP FUNCTION dispatch_attempts_apply();
CREATE TRIGGER dispatch_attempts_fenced BEFORE INSERT ON dispatch_attempts
FOR EACH ROW WHEN (NEW.recorded_by IS NOT NULL)
EXECUTE FUNCTION dispatch_attempts_fenced();
CREATE TRIGGER dispatch_attempts_set_message_status AFTER INSERT ON dispatch_attempts
FOR EACH ROW WHEN (NEW.message_status IS NOT NULL)
EXECUTE FUNCTION dispatch_attempts_set_message_status();

DROP TRIGGER messages_count_in_conversations ON messages;
DROP FUNCTION messages_count_in_conversations();
CREATE TRIGGER messages_count_in_conversation AFTER INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION messages_count_in_conversation();
