DROP TRIGGER conversations_counted ON conversations;
DROP FUNCTION conversations_counted();
DROP TABLE conversation_total;
