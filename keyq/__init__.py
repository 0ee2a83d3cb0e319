"""keyq: a single-machine job scheduler with per-key concurrency limits, durable in SQLite.

Define work with :func:`queue` and :func:`task`, trigger it with
``await my_task.trigger(payload, concurrency_key=...)`` or a :class:`Client`,
and run it with ``keyq serve`` or ``async with keyq.Daemon(config)``.
"""

from __future__ import annotations

from keyq.client import AsyncClient as AsyncClient
from keyq.client import Client as Client
from keyq.clock import Clock as Clock
from keyq.clock import FakeClock as FakeClock
from keyq.clock import SystemClock as SystemClock
from keyq.config import Config as Config
from keyq.config import LimitsConfig as LimitsConfig
from keyq.config import QueueConfig as QueueConfig
from keyq.config import load_config as load_config
from keyq.config import parse_config as parse_config
from keyq.context import Context as Context
from keyq.core.journal import ReplayMismatchError as ReplayMismatchError
from keyq.core.model import ErrorInfo as ErrorInfo
from keyq.core.retry import Retry as Retry
from keyq.core.states import RunState as RunState
from keyq.daemon.daemon import Daemon as Daemon
from keyq.errors import ConfigError as ConfigError
from keyq.errors import DaemonAlreadyRunningError as DaemonAlreadyRunningError
from keyq.errors import DatabaseBusyError as DatabaseBusyError
from keyq.errors import DefinitionError as DefinitionError
from keyq.errors import KeyqError as KeyqError
from keyq.errors import PayloadError as PayloadError
from keyq.errors import RunNotFoundError as RunNotFoundError
from keyq.errors import RunStateError as RunStateError
from keyq.errors import StoreError as StoreError
from keyq.errors import TokenNotFoundError as TokenNotFoundError
from keyq.errors import TokenStateError as TokenStateError
from keyq.errors import TriggerError as TriggerError
from keyq.errors import UnknownTaskError as UnknownTaskError
from keyq.errors import WaitError as WaitError
from keyq.registry import Queue as Queue
from keyq.registry import Registry as Registry
from keyq.registry import Task as Task
from keyq.registry import default_registry as default_registry
from keyq.registry import queue as queue
from keyq.registry import task as task
from keyq.results import RunFailedError as RunFailedError
from keyq.results import RunHandle as RunHandle
from keyq.results import RunResult as RunResult
from keyq.results import TokenResult as TokenResult
from keyq.results import TokenTimeoutError as TokenTimeoutError
from keyq.results import WaitToken as WaitToken
from keyq.schedules import Schedule as Schedule

__version__ = "0.1.0"
