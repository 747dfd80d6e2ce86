"""A flow whose task fails a set number of times, for retry tests.

RETRY_SIDE_FILE: each attempt appends "attempt <n> <idempotency key>".
RETRY_FAILURES: how many attempts fail before one succeeds (default 2).
RETRY_DELAY: seconds between attempts (default 0.05).
RETRY_KILL_ON: kill the process (SIGKILL) right after this attempt fails.
"""

from __future__ import annotations

import os
import signal

from persevere import flow, get_run_context, task

DELAY = float(os.environ.get("RETRY_DELAY", "0.05"))
KILL_ON = int(os.environ.get("RETRY_KILL_ON", "0"))


@task(retries=3, retry_delay_seconds=DELAY)
def flaky() -> str:
    ctx = get_run_context()
    attempt = ctx.attempt  # type: ignore[union-attr]
    with open(os.environ["RETRY_SIDE_FILE"], "a") as side:
        side.write(f"attempt {attempt} {ctx.idempotency_key}\n")  # type: ignore[union-attr]
    if attempt <= int(os.environ.get("RETRY_FAILURES", "2")):
        if attempt == KILL_ON:
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # die during the backoff that follows
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok after {attempt} attempts"


@flow
def retrying() -> str:
    return flaky()


@task
def first_step() -> int:
    with open(os.environ["RETRY_SIDE_FILE"], "a") as side:
        side.write("first-step\n")
    return 1


@flow(retries=2, retry_delay_seconds=DELAY)
def flaky_flow() -> int:
    """Fails after its first task on its first execution (the side file says which)."""
    value = first_step()
    with open(os.environ["RETRY_SIDE_FILE"]) as side:
        executions = sum(1 for line in side if line.startswith("flow-body"))
    with open(os.environ["RETRY_SIDE_FILE"], "a") as side:
        side.write("flow-body\n")
    if executions == 0:
        if KILL_ON:
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # die during the backoff that follows
        raise ConnectionError("the first execution fails")
    return value + 1
