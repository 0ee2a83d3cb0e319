"""Plain-text renderings of runs and stats for the terminal (``--json`` skips these)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from keyq.core.durations import format_duration
from keyq.core.states import CANCELED, COMPLETED, FAILED
from keyq.store.codec import iso
from keyq.store.reads import ACTIVE_NAMES

ACTIVE_COLUMNS = ACTIVE_NAMES
FINAL_COLUMNS = tuple(s.value for s in (COMPLETED, FAILED, CANCELED))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def render_runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs"
    rows = [
        (
            r["id"],
            r["task"],
            r["queue"],
            r["concurrency_key"],
            r["status"],
            f"{r['attempt']}/{r['max_attempts']}",
            r["created_at"],
        )
        for r in runs
    ]
    return table(("ID", "TASK", "QUEUE", "KEY", "STATUS", "ATTEMPT", "CREATED"), rows)


def render_tokens(tokens: list[dict[str, Any]]) -> str:
    if not tokens:
        return "no tokens"
    rows = [
        (t["id"], t["status"], t["run_id"], t["created_at"], t["timeout_at"], t["completed_at"])
        for t in tokens
    ]
    return table(("ID", "STATUS", "CREATED BY", "CREATED", "TIMES OUT", "DONE"), rows)


def render_run(run: dict[str, Any]) -> str:
    fields = (
        "id",
        "task",
        "queue",
        "concurrency_key",
        "status",
        "priority",
        "attempt",
        "max_attempts",
        "tags",
        "created_at",
        "started_at",
        "finished_at",
        "payload",
        "result",
        "error",
    )
    lines = [f"{f:<16}{_value(run[f])}" for f in fields]
    if run.get("parent_id"):
        lines.append(f"{'parent_id':<16}{run['parent_id']}")
    if run.get("waitpoint") and run["status"] in ("waiting", "queued"):
        lines.append(f"{'waiting_for':<16}{_waitpoint(run['waitpoint'])}")
    for i, child in enumerate(run.get("children") or ()):
        label = "children" if i == 0 else ""
        lines.append(f"{label:<16}{child['id']}  {child['task']}  {child['status']}")
    lines += ["", "timeline:", _timeline(run.get("events", []))]
    return "\n".join(lines)


def _waitpoint(wait: dict[str, Any]) -> str:
    if wait["kind"] == "until":
        return f"until {iso(wait['resume_at'])}"
    if wait["kind"] == "token":
        timeout = wait.get("timeout_at")
        return f"token {wait['token_id']}" + (f" (times out {iso(timeout)})" if timeout else "")
    return f"{len(wait['child_ids'])} child run(s)"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _timeline(events: list[dict[str, Any]]) -> str:
    """Each transition with how long the run spent in the state it left."""
    rows = []
    for i, e in enumerate(events):
        after = events[i + 1]["at"] if i + 1 < len(events) else None
        spent = format_duration(_seconds(e["at"], after)) if after else ""
        error = e.get("error")
        why = e["reason"] + (f" ({error['type']}: {error['message']})" if error else "")
        rows.append((e["at"], f"{e['from'] or 'new'} -> {e['to']}", f"#{e['attempt']}", why, spent))
    return table(("AT", "TRANSITION", "ATTEMPT", "REASON", "THEN FOR"), rows)


def _seconds(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


def render_queues(queues: list[dict[str, Any]]) -> str:
    if not queues:
        return "no queues yet"
    rows = [
        (
            q["queue"],
            q["concurrency_limit"] if q["concurrency_limit"] is not None else "none",
            q["total_limit"],
            q["rate_limit"] or "",
            _total_rate(q),
            "yes" if q["paused"] else "no",
            *(q[s] for s in ACTIVE_COLUMNS),
        )
        for q in queues
    ]
    headers = (
        "QUEUE",
        "LIMIT/KEY",
        "TOTAL",
        "RATE/KEY",
        "RATE TOTAL",
        "PAUSED",
        *(c.upper() for c in ACTIVE_COLUMNS),
    )
    return table(headers, rows)


def _total_rate(q: dict[str, Any]) -> str:
    """``500/1m (12 started; next 10:01:02Z)``: the total rate and its use now."""
    if q["rate_limit_total"] is None:
        return ""
    use = f"{q['total_rate_starts']} started"
    if q["total_rate_next_start_at"]:
        use += f"; next {q['total_rate_next_start_at'][11:19]}Z"
    return f"{q['rate_limit_total']} ({use})"


def render_keys(keys: list[dict[str, Any]]) -> str:
    if not keys:
        return "no active keys in this queue"
    rows = [
        (
            k["concurrency_key"] if k["concurrency_key"] is not None else "(no key)",
            k["limit"],
            "AT LIMIT" if k["at_limit"] else ("AT RATE" if k["next_start_at"] else ""),
            k["rate_limit"] or "",
            "" if k["rate_starts"] is None else k["rate_starts"],
            k["next_start_at"][11:19] + "Z" if k["next_start_at"] else "",
            *(k[s] for s in ACTIVE_COLUMNS),
        )
        for k in keys
    ]
    headers = ("KEY", "LIMIT", "", "RATE", "STARTED", "NEXT START")
    return table((*headers, *(c.upper() for c in ACTIVE_COLUMNS)), rows)


def render_stats(stats: dict[str, Any]) -> str:
    columns = (*ACTIVE_COLUMNS, *FINAL_COLUMNS)
    lines = [stats["message"], ""]
    queue_rows = [(name, *(c[s] for s in columns)) for name, c in stats["queues"].items()]
    lines.append(
        table(("QUEUE", *(c.upper() for c in columns)), queue_rows) if queue_rows else "no runs yet"
    )
    if stats["keys"]:
        key_rows = [
            (k["queue"], k["concurrency_key"], *(k[s] for s in ACTIVE_COLUMNS))
            for k in stats["keys"][:50]
        ]
        lines += ["", table(("QUEUE", "KEY", *(c.upper() for c in ACTIVE_COLUMNS)), key_rows)]
        if len(stats["keys"]) > 50:
            lines.append(f"... and {len(stats['keys']) - 50} more keys (see --json)")
    return "\n".join(lines)


def render_schedules(schedules: list[dict[str, Any]]) -> str:
    if not schedules:
        return "no schedules stored (the daemon stores its schedules when it starts)"
    rows = [
        (
            s["id"],
            s["task"],
            s["cadence"],
            s["tz"],
            "gone" if s["gone"] else ("paused" if s["paused"] else ""),
            _when(s["next_fire_at"]),
            _when(s["last_tick"]),
            f"{s['last_run_id']} {s['last_run_status'] or 'deleted'}" if s["last_run_id"] else "",
        )
        for s in schedules
    ]
    headers = ("ID", "TASK", "CRON / EVERY", "TZ", "STATE", "NEXT FIRE", "LAST TICK", "LAST RUN")
    return table(headers, rows)


def _when(at: str | None) -> str:
    return at[:19].replace("T", " ") + "Z" if at else ""
