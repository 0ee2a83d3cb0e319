-- keyq schema, version 2: durable waits.
--
-- `journal` holds, for each run, every wait and ctx.step it made, by position
-- in the run. After a restart (or when a long wait dropped its coroutine) the
-- task function runs again from the top and each recorded entry returns its
-- record instead of waiting or executing again: replay.
CREATE TABLE journal (
    run_id  TEXT    NOT NULL,
    pos     INTEGER NOT NULL,
    kind    TEXT    NOT NULL,  -- step | wait | children | token | for_token
    name    TEXT    NOT NULL,  -- a step's name, the child tasks, the awaited token
    data    TEXT    NOT NULL,  -- JSON: a step's result, a wait's target
    at      REAL    NOT NULL,
    PRIMARY KEY (run_id, pos)
) WITHOUT ROWID;

-- Waitpoint tokens: created by ctx.wait.create_token or a client, completed
-- from outside (`keyq tokens complete`). `completed_seq` numbers completions
-- so the daemon reads new ones by range, as it reads new runs by `seq`.
CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,
    run_id          TEXT,
    idempotency_key TEXT UNIQUE,
    status          TEXT NOT NULL,  -- waiting | completed | timed_out
    created_at      REAL NOT NULL,
    timeout_at      REAL,
    completed_at    REAL,
    output          TEXT,
    completed_seq   INTEGER UNIQUE
);

CREATE INDEX tokens_status ON tokens (status, created_at);
