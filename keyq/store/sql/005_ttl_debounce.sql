-- keyq schema, version 5: ttl and debounce.
--
-- expires_at: a run not started by then is canceled (reason ttl_expired).
-- debounce_key: while the run is DELAYED and has not started, a later trigger of
-- its task with this key folds into it; debounce_until caps how far its start may
-- be pushed (the first trigger + debounce_max). The partial index finds that run
-- when no daemon runs (the client's offline path, keyq/store/debounce.py); the
-- daemon keeps its own index in memory.
ALTER TABLE runs ADD COLUMN expires_at REAL;
ALTER TABLE runs ADD COLUMN debounce_key TEXT;
ALTER TABLE runs ADD COLUMN debounce_until REAL;
CREATE INDEX runs_debounce ON runs (task, debounce_key)
    WHERE debounce_key IS NOT NULL AND status = 'delayed' AND attempt = 0;
