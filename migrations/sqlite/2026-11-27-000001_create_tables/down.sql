DROP TABLE dispatch_attempts;
DROP TABLE messages;
DROP TABLE conversations;
