"""The pure core: the run state machine, limits, dispatch, timers, retry, the journal and
the engine that composes them. No I/O, no clock, no logging: it takes ``now`` and returns
what to do (a test over its imports keeps it so)."""
