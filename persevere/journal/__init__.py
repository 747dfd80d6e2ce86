"""All SQL of persevere: schema, migrations, the Journal API and result codecs."""

from .journal import Journal
from .records import CacheEntry, FlowRun, LogLine, StoredResult, TaskRun, TaskStart, Transition
from .registry import close_all, open_journal
from .results import Codec, from_json, to_json
from .schema import SCHEMA_VERSION
from .statements import new_id, task_run_id
from .writer import Op

__all__ = [
    "SCHEMA_VERSION",
    "CacheEntry",
    "Codec",
    "FlowRun",
    "Journal",
    "LogLine",
    "Op",
    "StoredResult",
    "TaskRun",
    "TaskStart",
    "Transition",
    "close_all",
    "from_json",
    "new_id",
    "open_journal",
    "task_run_id",
    "to_json",
]
