DROP TABLE readiness_probe;
DROP TABLE dispatch_attempts;
DROP TABLE messages;
DROP TABLE conversations;
