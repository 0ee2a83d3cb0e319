-- keyq schema, version 3: rate limits.
--
-- A rate is stored as text, as it is written: '100/1m', or 'none' to lift the
-- rate code or config set; NULL leaves the lower layer's (for a key: the
-- queue's rate applies).
ALTER TABLE queue_settings ADD COLUMN rate_limit TEXT;
ALTER TABLE queue_settings ADD COLUMN rate_limit_total TEXT;
ALTER TABLE key_settings ADD COLUMN rate_limit TEXT;

-- Every start a rate limit counted, written with its RUNNING transition, so a
-- restart rebuilds each window as it was and never grants a fresh burst.
-- Rows older than the longest window are deleted as new ones are written.
CREATE TABLE rate_starts (
    queue           TEXT NOT NULL,
    concurrency_key TEXT,
    at              REAL NOT NULL
);
CREATE INDEX rate_starts_at ON rate_starts (at);
