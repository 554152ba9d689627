DROP TABLE breaker_overrides;
