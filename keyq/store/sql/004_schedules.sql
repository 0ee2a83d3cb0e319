-- keyq schema, version 4: schedules.
--
-- A scheduled run carries its schedule and tick, and the unique index makes the
-- run row itself the claim of its tick: a second run for the same tick cannot be
-- stored, whatever crashed in between. schedule_previous is the schedule's tick
-- before this one (ctx.schedule.previous).
ALTER TABLE runs ADD COLUMN schedule_id TEXT;
ALTER TABLE runs ADD COLUMN schedule_tick REAL;
ALTER TABLE runs ADD COLUMN schedule_previous REAL;
CREATE UNIQUE INDEX runs_schedule_tick ON runs (schedule_id, schedule_tick)
    WHERE schedule_id IS NOT NULL;

-- Every schedule the daemon was ever given, kept when it is removed from the code
-- or config (defined = 0: shown as gone, its history kept). last_tick and
-- last_run_id are written in the transaction that stores the tick's run, so a
-- restart knows every tick claimed even after retention deleted old runs.
-- fires_after: only ticks after it are due (set when the schedule is first
-- defined, defined again after it was gone, or resumed): those ticks are not
-- replayed.
CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,
    task         TEXT NOT NULL,
    cadence      TEXT NOT NULL,
    tz           TEXT NOT NULL,
    misfire      TEXT NOT NULL,
    defined      INTEGER NOT NULL DEFAULT 1,
    paused       INTEGER NOT NULL DEFAULT 0,
    fires_after  REAL NOT NULL,
    last_tick    REAL,
    last_run_id  TEXT,
    updated_at   REAL NOT NULL
) WITHOUT ROWID;
