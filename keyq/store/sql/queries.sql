-- Named queries, loaded by keyq.db.QUERIES. One statement each.

-- name: insert_run
-- Run ids are chosen by the producer: a run handed to the daemon and also stored
-- directly (its answer was lost) is stored once (keyq/handoff.py).
-- A second run for a schedule's tick fails on runs_schedule_tick: the tick is claimed.
INSERT INTO runs (id, task, queue, concurrency_key, status, priority, max_attempts, payload,
                  tags, idempotency_key, queue_limit, parent_id, created_at, available_at, events,
                  schedule_id, schedule_tick, schedule_previous, expires_at, debounce_key,
                  debounce_until)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING;

-- name: claim_schedule_tick
UPDATE schedules SET last_tick = ?2, last_run_id = ?3, updated_at = ?4
WHERE id = ?1 AND (last_tick IS NULL OR last_tick < ?2);

-- name: define_schedule
INSERT INTO schedules (id, task, cadence, tz, misfire, defined, paused, fires_after, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, 1, 0, ?6, ?6)
ON CONFLICT (id) DO UPDATE SET task = ?2, cadence = ?3, tz = ?4, misfire = ?5, defined = 1,
    fires_after = CASE WHEN defined THEN fires_after ELSE ?6 END, updated_at = ?6;

-- name: undefine_schedules
UPDATE schedules SET defined = 0, updated_at = ?2
WHERE defined AND id NOT IN (SELECT value FROM json_each(?1));

-- name: select_schedules
SELECT id, task, cadence, tz, misfire, defined, paused, fires_after, last_tick, last_run_id
FROM schedules ORDER BY id;

-- name: list_schedules
-- With each last tick's run status (NULL once retention deleted it): one query.
SELECT s.id, s.task, s.cadence, s.tz, s.misfire, s.defined, s.paused, s.fires_after,
       s.last_tick, s.last_run_id, r.status
FROM schedules s LEFT JOIN runs r ON r.id = s.last_run_id ORDER BY s.id;

-- name: pause_schedule
-- Resuming moves fires_after to now: ticks that fell while paused are not replayed.
UPDATE schedules SET paused = ?2, updated_at = ?3,
    fires_after = CASE WHEN paused AND NOT ?2 THEN ?3 ELSE fires_after END
WHERE id = ?1;

-- name: select_active_scheduled
SELECT id, schedule_id, schedule_tick, schedule_previous FROM runs
WHERE schedule_id IS NOT NULL AND status IN ('queued', 'delayed', 'running', 'waiting');

-- name: select_stored_ids
SELECT id FROM runs WHERE id IN (SELECT value FROM json_each(?));

-- name: seq_of_run
SELECT seq FROM runs WHERE id = ?;

-- name: find_idempotent
SELECT id FROM runs WHERE task = ? AND idempotency_key = ?;

-- name: set_queue_limit_from_trigger
INSERT INTO queue_settings (queue, concurrency_limit, updated_at) VALUES (?, ?, ?)
ON CONFLICT (queue) DO UPDATE SET concurrency_limit = excluded.concurrency_limit,
                                  updated_at = excluded.updated_at;

-- name: upsert_queue_settings
INSERT INTO queue_settings (queue, concurrency_limit, total_limit, paused, rate_limit,
                            rate_limit_total, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (queue) DO UPDATE SET concurrency_limit = excluded.concurrency_limit,
                                  total_limit = excluded.total_limit,
                                  paused = excluded.paused,
                                  rate_limit = excluded.rate_limit,
                                  rate_limit_total = excluded.rate_limit_total,
                                  updated_at = excluded.updated_at;

-- name: upsert_key_settings
INSERT INTO key_settings (queue, concurrency_key, concurrency_limit, paused, rate_limit,
                          updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (queue, concurrency_key) DO UPDATE SET concurrency_limit = excluded.concurrency_limit,
                                                   paused = excluded.paused,
                                                   rate_limit = excluded.rate_limit,
                                                   updated_at = excluded.updated_at;

-- name: select_queue_settings
SELECT queue, concurrency_limit, total_limit, paused, rate_limit, rate_limit_total
FROM queue_settings;

-- name: select_key_settings
SELECT queue, concurrency_key, concurrency_limit, paused, rate_limit FROM key_settings;

-- name: insert_rate_start
INSERT INTO rate_starts (queue, concurrency_key, at) VALUES (?, ?, ?);

-- name: forget_rate_starts
DELETE FROM rate_starts WHERE at < ?;

-- name: select_rate_starts
SELECT queue, concurrency_key, at FROM rate_starts WHERE at >= ? ORDER BY at;

-- name: recent_rate_starts
SELECT at FROM rate_starts
WHERE queue = ?1 AND (?2 = 0 OR concurrency_key IS ?3) AND at > ?4
ORDER BY at DESC LIMIT ?5;

-- name: select_new_runs
SELECT seq, id, task, queue, concurrency_key, status, priority, attempt, max_attempts, payload,
       queue_limit, parent_id, waitpoint, cancel_requested_at, created_at, available_at,
       expires_at, debounce_key, debounce_until
FROM runs WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: select_runs_in_state
-- One index range of runs_status, already in seq order: recovery merges the four
-- active states instead of sorting the whole backlog.
SELECT seq, id, task, queue, concurrency_key, status, priority, attempt, max_attempts, payload,
       queue_limit, parent_id, waitpoint, cancel_requested_at, created_at, available_at,
       expires_at, debounce_key, debounce_until
FROM runs WHERE status = ? ORDER BY seq;

-- name: select_runs_by_ids
SELECT seq, id, task, queue, concurrency_key, status, priority, attempt, max_attempts, payload,
       queue_limit, parent_id, waitpoint, cancel_requested_at, created_at, available_at,
       expires_at, debounce_key, debounce_until
FROM runs WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq;

-- name: max_seq
SELECT COALESCE(MAX(seq), 0) FROM runs;

-- name: apply_transition
UPDATE runs SET status = ?, attempt = ?,
                started_at = COALESCE(started_at, ?),
                finished_at = ?,
                result = COALESCE(?, result),
                error = COALESCE(?, error),
                available_at = COALESCE(?, available_at),
                waitpoint = ?,
                payload = COALESCE(?, payload),
                events = events || ?
WHERE seq = ?;

-- name: mark_cancel_requested
UPDATE runs SET cancel_requested_at = ? WHERE seq = ?;

-- name: cancel_stored_run
UPDATE runs SET status = 'canceled', finished_at = ?, waitpoint = NULL, events = events || ?
WHERE id = ? AND status IN ('queued', 'delayed', 'running', 'waiting');

-- name: get_run
SELECT * FROM runs WHERE id = ?;

-- name: get_run_outcome
SELECT status, result, error FROM runs WHERE id = ?;

-- name: list_runs
SELECT * FROM runs
WHERE (?1 IS NULL OR queue = ?1)
  AND (?2 IS NULL OR concurrency_key = ?2)
  AND (?3 IS NULL OR task = ?3)
  AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE value = ?4))
ORDER BY seq DESC LIMIT ?5;

-- name: list_runs_by_status
SELECT * FROM runs INDEXED BY runs_status
WHERE status = ?6
  AND (?1 IS NULL OR queue = ?1)
  AND (?2 IS NULL OR concurrency_key = ?2)
  AND (?3 IS NULL OR task = ?3)
  AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE value = ?4))
ORDER BY seq DESC LIMIT ?5;

-- name: count_by_bucket
SELECT queue, concurrency_key, status, COUNT(*) FROM runs GROUP BY queue, concurrency_key, status;

-- name: get_queue_settings
SELECT concurrency_limit, total_limit, paused, rate_limit, rate_limit_total
FROM queue_settings WHERE queue = ?;

-- name: get_key_settings
SELECT concurrency_limit, paused, rate_limit FROM key_settings
WHERE queue = ? AND concurrency_key = ?;

-- name: get_run_status
SELECT status, attempt FROM runs WHERE id = ?;

-- name: count_active_by_queue
SELECT queue, status, COUNT(*) FROM runs INDEXED BY runs_status
WHERE status IN ('queued', 'delayed', 'running', 'waiting') GROUP BY queue, status;

-- name: count_active_by_key
SELECT concurrency_key, status, COUNT(*) FROM runs INDEXED BY runs_status
WHERE status IN ('queued', 'delayed', 'running', 'waiting') AND queue = ?
GROUP BY concurrency_key, status;

-- name: insert_journal_entry
INSERT OR IGNORE INTO journal (run_id, pos, kind, name, data, at) VALUES (?, ?, ?, ?, ?, ?);

-- name: select_journal
SELECT pos, kind, name, data FROM journal WHERE run_id = ? ORDER BY pos;

-- name: select_journaled_active_runs
SELECT DISTINCT r.id FROM runs r INDEXED BY runs_status JOIN journal j ON j.run_id = r.id
WHERE r.status IN ('queued', 'delayed', 'running', 'waiting');

-- name: insert_token
INSERT INTO tokens (id, run_id, idempotency_key, status, created_at, timeout_at)
VALUES (?, ?, ?, 'waiting', ?, ?)
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: get_token
SELECT id, run_id, idempotency_key, status, created_at, timeout_at, completed_at, output
FROM tokens WHERE id = ?;

-- name: get_token_by_key
SELECT id, run_id, idempotency_key, status, created_at, timeout_at, completed_at, output
FROM tokens WHERE idempotency_key = ?;

-- name: complete_token
UPDATE tokens SET status = 'completed', output = ?1, completed_at = ?2,
                  completed_seq = (SELECT COALESCE(MAX(completed_seq), 0) + 1 FROM tokens)
WHERE id = ?3 AND status = 'waiting' AND (timeout_at IS NULL OR timeout_at > ?2);

-- name: time_out_token
UPDATE tokens SET status = 'timed_out', completed_at = ?1 WHERE id = ?2 AND status = 'waiting';

-- name: select_completed_tokens
SELECT completed_seq, id FROM tokens WHERE completed_seq > ? ORDER BY completed_seq LIMIT ?;

-- name: max_completed_token_seq
SELECT COALESCE(MAX(completed_seq), 0) FROM tokens;

-- name: list_tokens
SELECT id, run_id, idempotency_key, status, created_at, timeout_at, completed_at, output
FROM tokens WHERE (?1 IS NULL OR status = ?1) ORDER BY created_at DESC LIMIT ?2;

-- name: select_children
SELECT id, task, status FROM runs INDEXED BY runs_parent WHERE parent_id = ? ORDER BY seq;

-- name: active_descendants
WITH RECURSIVE tree (id) AS (
    SELECT id FROM runs INDEXED BY runs_parent WHERE parent_id = ?
    UNION
    SELECT r.id FROM runs r INDEXED BY runs_parent JOIN tree t ON r.parent_id = t.id
)
SELECT r.id FROM runs r JOIN tree USING (id)
WHERE r.status IN ('queued', 'delayed', 'running', 'waiting');

-- name: find_debounced
-- The DELAYED run, not yet started, that a debounced trigger folds into (no daemon runs).
SELECT seq, id, debounce_until FROM runs INDEXED BY runs_debounce
WHERE task = ? AND debounce_key = ? AND status = 'delayed' AND attempt = 0
ORDER BY seq DESC LIMIT 1;

-- name: fold_debounced
UPDATE runs SET payload = ?, available_at = ?, events = events || ? WHERE seq = ?;
