DROP TRIGGER conversations_counted;
DROP TABLE conversation_total;
