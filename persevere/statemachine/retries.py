"""Retry timing: when a failed attempt may run again, as a pure function.

The schedule is expressed with tenacity's wait strategies (``wait_fixed``,
``wait_chain``, ``wait_exponential``, or any ``tenacity.wait_base`` the user
passes), but tenacity's retry loop is not used: the engine needs the *time*
of the next attempt, to journal it, so that a retry survives a crash and a
resumed run waits only for what is left. Jitter takes its random number as an
argument, so this module reads no clock and no random source.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: What ``retry_delay_seconds`` accepts.
DelaySpec = float | Sequence[float] | Callable[[int], float] | Any


@dataclass(frozen=True)
class RetryPolicy:
    """How often and when a task or flow is tried again after a failure.

    Attributes:
        retries: how many times to try again (0: never).
        delay: seconds before each retry: a number; a list (one per retry,
            the last repeated); a function of the retry number (1, 2, ...);
            or a tenacity wait strategy such as ``exponential_backoff(2)``.
        jitter_factor: spread each delay at random within ``delay * (1 ± f)``.
    """

    retries: int = 0
    delay: DelaySpec = 0.0
    jitter_factor: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries={self.retries!r} must be a whole number >= 0")
        if self.jitter_factor is not None and not 0 <= self.jitter_factor <= 1:
            raise ValueError(f"retry_jitter_factor={self.jitter_factor!r} must be within 0..1")
        _check(self.delay)  # refuse a bad delay when the task is declared, not when it fails


@functools.lru_cache(maxsize=256)
def _cached_strategy(delay: float | tuple[float, ...]) -> Callable[[Any], float]:
    import tenacity  # deferred: ~26 ms, paid by the first failure that may retry

    if isinstance(delay, tuple):
        if not delay or any(not isinstance(d, (int, float)) or d < 0 for d in delay):
            raise ValueError(f"retry_delay_seconds={list(delay)!r}: give seconds >= 0")
        return tenacity.wait_chain(*(tenacity.wait_fixed(d) for d in delay))
    return tenacity.wait_fixed(delay)


def _check(delay: DelaySpec) -> None:
    """Refuse what cannot be a delay, without building (or importing) anything."""
    if isinstance(delay, bool):
        raise ValueError(f"retry_delay_seconds={delay!r}: give seconds")
    if isinstance(delay, (int, float)):
        if delay < 0:
            raise ValueError(f"retry_delay_seconds={delay!r} must be >= 0")
    elif isinstance(delay, (list, tuple)):
        if not delay or any(
            isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0 for d in delay
        ):
            raise ValueError(f"retry_delay_seconds={list(delay)!r}: give seconds >= 0")
    elif not callable(delay):
        raise ValueError(f"retry_delay_seconds={delay!r}: give seconds, a list, or a function")


def _strategy(delay: DelaySpec) -> Callable[[Any], float]:
    if isinstance(delay, bool):
        raise ValueError(f"retry_delay_seconds={delay!r}: give seconds")
    if isinstance(delay, (int, float)):
        if delay < 0:
            raise ValueError(f"retry_delay_seconds={delay!r} must be >= 0")
        return _cached_strategy(float(delay))
    if isinstance(delay, (list, tuple)):
        return _cached_strategy(tuple(delay))
    if hasattr(delay, "__call__"):  # noqa: B004 (a tenacity strategy or a function)
        if type(delay).__module__.startswith("tenacity"):
            return delay
        return lambda state: float(delay(state.attempt_number))
    raise ValueError(f"retry_delay_seconds={delay!r}: give seconds, a list, or a function")


def retry_delay(policy: RetryPolicy, retry_number: int, rand: float) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 for the first retry).

    ``rand`` is a number in [0, 1) used for jitter.
    """
    state = types.SimpleNamespace(attempt_number=retry_number)
    delay = max(0.0, float(_strategy(policy.delay)(state)))
    if policy.jitter_factor:
        delay *= 1 + policy.jitter_factor * (2 * rand - 1)
    return max(0.0, delay)


def next_attempt_ms(policy: RetryPolicy, retries_used: int, now_ms: int, rand: float) -> int | None:
    """When the next attempt may start, or None when no retry is left."""
    if retries_used >= policy.retries:
        return None
    return now_ms + round(retry_delay(policy, retries_used + 1, rand) * 1000)


def exponential_backoff(backoff_factor: float) -> Any:
    """Delays of ``backoff_factor * 2 ** (n - 1)`` seconds before retry n: 1, 2, 4, ... x factor."""
    import tenacity

    if backoff_factor <= 0:
        raise ValueError(f"backoff_factor={backoff_factor!r} must be > 0")
    return tenacity.wait_exponential(multiplier=backoff_factor, exp_base=2)
