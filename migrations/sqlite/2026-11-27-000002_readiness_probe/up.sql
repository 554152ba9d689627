-- One row that /readyz rewrites: readiness means the database takes writes, not only reads
-- (a locked or full database still answers SELECTs).
CREATE TABLE readiness_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL
);
