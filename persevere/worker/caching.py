"""Cross-run caching of task results: keys for calls, hits journaled as Cached.

The key comes from the task's cache policy (``statemachine/caching.py``) or
its ``cache_key_fn``. An input with no stable hash makes the call uncached,
with a warning that names the argument: never a wrong cache hit.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

from .. import clock
from ..context import FlowRunContext, TaskRunContext
from ..journal import CacheEntry, Op, StoredResult, TaskStart, from_json
from ..statemachine.caching import Unhashable, cache_key
from .logs import get_run_logger


@functools.lru_cache(maxsize=1024)
def _signature(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)


@functools.lru_cache(maxsize=1024)
def task_source(fn: Any) -> str:
    """The task's source code (its compiled code, where the source is not at hand)."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = fn.__code__
        return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()


def key_for(
    task: Any, ctx: FlowRunContext, start: TaskStart, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    """The cache key of this call, or None if it is not to be cached."""
    policy = task.cache_policy
    if not policy.caches and task.cache_key_fn is None:
        return None
    bound = _signature(task.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    inputs = dict(bound.arguments)
    try:
        if task.cache_key_fn is not None:
            run_ctx = TaskRunContext(
                start.flow_run_id, start.id, start.task_key, start.dynamic_key, start.attempt
            )
            key = task.cache_key_fn(run_ctx, inputs)
            return None if key is None else str(key)
        source = task_source(task.fn) if "task_source" in policy.parts else None
        params = from_json(ctx.run.parameters) if "flow_parameters" in policy.parts else None
        return cache_key(policy, task.task_key, inputs, source, params)
    except Unhashable as exc:
        get_run_logger("persevere.cache").warning(
            f"Task {task.name!r} is not cached: {exc}; pass cache_key_fn=... to key it yourself, "
            f"or leave the argument out with cache_policy=INPUTS - {exc.argument!r}"
        )
        return None


def lookup(ctx: FlowRunContext, task: Any, key: str | None) -> CacheEntry | None:
    """A live cache entry for this call, unless there is none or the task refreshes it."""
    if key is None or task.refresh_cache:
        return None
    return ctx.journal.cache.find(key, clock.now_ms())


def store_op(
    ctx: FlowRunContext, task: Any, key: str, start: TaskStart, result: StoredResult
) -> Op:
    """The write that caches a completed call's result (committed with the task run)."""
    expiration = task.cache_expiration
    expires = (
        None if expiration is None else clock.now_ms() + int(expiration.total_seconds() * 1000)
    )
    return ctx.journal.cache.put_op(
        key, task.task_key, start.id, result, expires, start.flow_run_id
    )
