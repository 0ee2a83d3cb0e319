-- keyq schema, version 1.
--
-- `runs` is the only state there is: the daemon rebuilds its memory from it.
-- `seq` orders runs by creation; producers insert, the daemon reads new rows by
-- `seq > last seen`, so ingesting never scans the backlog.
-- `events` is the run's timeline as JSON lines, appended by each transition's
-- UPDATE: a run costs one INSERT and one UPDATE per transition, no extra rows.
CREATE TABLE runs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    task            TEXT    NOT NULL,
    queue           TEXT    NOT NULL,
    concurrency_key TEXT,
    status          TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    result          TEXT,
    error           TEXT,
    tags            TEXT    NOT NULL DEFAULT '[]',
    idempotency_key TEXT,
    queue_limit     INTEGER,
    parent_id       TEXT,
    waitpoint       TEXT,
    -- set when a RUNNING run's cancel is acknowledged, before its attempt has
    -- stopped: a crash in between must not run it again
    cancel_requested_at REAL,
    created_at      REAL    NOT NULL,
    available_at    REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    events          TEXT    NOT NULL
);

CREATE INDEX runs_status ON runs (status, seq);
CREATE UNIQUE INDEX runs_idempotency ON runs (task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;

-- Limits set at run time (`keyq queues set-limit`, trigger-time overrides,
-- pauses); they win over code and config until reset.
CREATE TABLE queue_settings (
    queue             TEXT PRIMARY KEY,
    concurrency_limit INTEGER,
    total_limit       INTEGER,
    paused            INTEGER NOT NULL DEFAULT 0,
    updated_at        REAL    NOT NULL
);

CREATE TABLE key_settings (
    queue             TEXT    NOT NULL,
    concurrency_key   TEXT    NOT NULL,
    concurrency_limit INTEGER,
    paused            INTEGER NOT NULL DEFAULT 0,
    updated_at        REAL    NOT NULL,
    PRIMARY KEY (queue, concurrency_key)
);
