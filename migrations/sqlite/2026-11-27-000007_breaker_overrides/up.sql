-- Operators' breaker settings (CONTRACT section 11), kept so that every instance obeys
-- them (each reads them at every lease renewal) and a restart keeps them.
CREATE TABLE breaker_overrides (
    provider_name TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('forced_open', 'disabled', 'closed')),
    updated_at TEXT NOT NULL
);
