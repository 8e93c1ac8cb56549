"""One outcome for all processes of a multi-process run.

Every process runs the same program and meets the others in collectives (each step's all-reduce,
Orbax's barriers). A process that ended alone would leave the others waiting in the next one
forever. So:
- joining has a time limit (--join-timeout), and a process kept waiting says what it waits for;
- a process that stops answering for --peer-timeout seconds (killed, its machine gone) is taken
  for dead by jax.distributed, which then aborts every other process; native_abort turns that
  abort's C++ stack into one sentence;
- a process that ends with an error, a refusal or a stop publishes its exit code and sentence in
  jax.distributed's key-value store. A watcher thread in every other process reads it, says which
  process met what, and ends its own process with the same code.
Ending a process at once is safe: checkpoints are written atomically, so what was saved is intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import jax
from orbax.checkpoint import multihost

from jaxmnist.config import flag
from jaxmnist.errors import UserError
from jaxmnist.runtime import native_abort

log = logging.getLogger("jaxmnist")

OUTCOME_KEY = "jaxmnist/outcome"  # the first process to end publishes {"process", "code", "sentence"}
SETTINGS_KEY = "jaxmnist/settings/"  # + the process index: what the process was started with
ENDED_KEY = "jaxmnist/ended/"  # + the process index: set by every process just before it ends
POLL_SECONDS = 0.5
SAY_WAITING_AFTER_SECONDS = 5
LEAVE_LAST_SECONDS = 10  # how long process 0 waits for the others to mark themselves ended
GONE_SECONDS = 2  # and then for them to exit, which they do right after
PEER_VERDICT_SECONDS = 10  # after --peer-timeout, for jax.distributed to tell every process a peer died

_peer_timeout = 0.0

_decided = threading.Lock()  # held by whoever decides how this process ends: its own failure, or a peer's


def join(join_timeout: float, peer_timeout: float) -> None:
    """Join the processes the environment describes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID; on a cluster jax.distributed detects, JAX_NUM_PROCESSES alone), then watch
    for a peer's outcome. A no-op for a one-process run."""
    global _peer_timeout  # noqa: PLW0603 - one run per process
    num_processes = _whole_number("JAX_NUM_PROCESSES", default="1")
    if num_processes <= 1:
        return
    _peer_timeout = peer_timeout
    process_id = os.environ.get("JAX_PROCESS_ID")
    if process_id is not None and not 0 <= _whole_number("JAX_PROCESS_ID") < num_processes:
        raise UserError(f"JAX_PROCESS_ID must be between 0 and {num_processes - 1} (JAX_NUM_PROCESSES is "
                        f"{num_processes}), got {process_id}.")
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    native_abort.guard_stderr(process_id or "", num_processes, join_timeout, peer_timeout)
    who = f"Process {process_id} of {num_processes}" if process_id else "This process"
    waiting = threading.Timer(SAY_WAITING_AFTER_SECONDS, log.warning, (
        f"{who} is waiting for the others at {address or 'the coordinator'} (up to --join-timeout {join_timeout:g} "
        "s) ...",))
    waiting.start()
    try:
        jax.distributed.initialize(
            coordinator_address=address, num_processes=num_processes,
            process_id=None if process_id is None else int(process_id),
            initialization_timeout=int(join_timeout), heartbeat_timeout_seconds=int(peer_timeout),
        )
    finally:
        waiting.cancel()
    threading.Thread(target=_watch, name="jaxmnist-peers", daemon=True).start()


def _whole_number(variable: str, default: str | None = None) -> int:
    value = os.environ.get(variable, default)
    if not (value and value.strip().isdigit()):
        raise UserError(f"{variable} must be a whole number, got {value!r}.")
    return int(value)


def decide_outcome(unexpected: bool = False) -> None:
    """This process's own failure decides how it ends (call it before saying why): from now on a
    peer's outcome is ignored. When a peer's outcome already ends this process, wait for that
    instead: the error met meanwhile is a consequence (a collective, or a checkpoint's restore,
    whose peer left).

    An unexpected error may also be a collective whose peer died (Gloo's "Connection closed by
    peer"): jax.distributed then ends this process within --peer-timeout, in its own sentence, so
    only an error that outlives that wait is this process's to report."""
    if not jax.distributed.is_initialized():  # one process: nobody else decides
        return
    # A peer that ended first published why before leaving; give the watcher time to read it.
    deadline = time.monotonic() + (_peer_timeout + PEER_VERDICT_SECONDS if unexpected else 2 * POLL_SECONDS)
    while time.monotonic() < deadline and not _decided.locked():
        time.sleep(POLL_SECONDS / 5)
    if not _decided.acquire(blocking=False):
        threading.Event().wait()  # the watcher exits the process


def check_same_everywhere(settings: dict[str, Any], wait_seconds: float) -> None:
    """Refuse, on every process, a run whose processes were started with different settings: they
    would train different things in lockstep, or wait at different points for each other forever.
    settings maps each flag's name (`lr`) to its value, and "data" to the data's fingerprint."""
    if not jax.distributed.is_initialized():
        return
    client = multihost.get_jax_distributed_client()
    me, count = jax.process_index(), jax.process_count()
    mine = json.dumps(settings, sort_keys=True)
    settings = json.loads(mine)  # compared as the others read it (a tuple becomes a list)
    client.key_value_set(f"{SETTINGS_KEY}{me}", mine)
    for other in (p for p in range(count) if p != me):
        try:
            theirs = json.loads(client.blocking_key_value_get(f"{SETTINGS_KEY}{other}", int(wait_seconds * 1000)))
        except Exception:  # noqa: BLE001 - DEADLINE_EXCEEDED
            raise UserError(f"Process {me} of {count} waited {wait_seconds:g} s for process {other} to start "
                            "training (--join-timeout); it may be stuck reading its data.") from None
        for name, value in settings.items():
            if theirs.get(name) != value:
                raise UserError(f"Process {me} of {count} has {_as_given(name, value)}, process {other} "
                                f"{_as_given(name, theirs.get(name))}; start every process with the same flags and data.")


def _as_given(name: str, value: Any) -> str:
    return f"data with fingerprint {value}" if name == "data" else f"{flag(name)} {value}"


def end_together(code: int, sentence: str) -> None:
    """End this process, having told the others why (they end with the same code). Returns only
    in a one-process run. jax.distributed's own shutdown is skipped: it waits for every process,
    and those that already ended would keep it waiting."""
    if not jax.distributed.is_initialized():
        return
    client = multihost.get_jax_distributed_client()
    outcome = {"process": jax.process_index(), "code": code, "sentence": sentence}
    with contextlib.suppress(Exception):  # another process published first, or the coordinator is gone
        client.key_value_set(OUTCOME_KEY, json.dumps(outcome))
    _leave(client, code)


def _watch() -> None:
    """Until this process's outcome is decided: the first outcome a peer publishes ends it too."""
    client = multihost.get_jax_distributed_client()
    while not _decided.locked():
        time.sleep(POLL_SECONDS)
        try:
            outcome = json.loads(client.key_value_try_get(OUTCOME_KEY))
        except Exception:  # noqa: BLE001 - not published yet (NOT_FOUND); a lost coordinator aborts by itself
            continue
        if outcome["process"] == jax.process_index() or not _decided.acquire(blocking=False):
            return
        log.error("Process %d of %d stopped too: process %d ended with \"%s\"", jax.process_index(),
                  jax.process_count(), outcome["process"], outcome["sentence"])
        _leave(client, outcome["code"])


def _leave(client, code: int) -> None:
    """Mark this process as ended and exit at once. Process 0 hosts the coordinator, whose end
    aborts every process still connected, so it leaves last: it waits (less than --peer-timeout)
    until the others have marked themselves, and a moment more for them to be gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(Exception):  # a peer that cannot mark itself is gone already
        client.key_value_set(f"{ENDED_KEY}{jax.process_index()}", "1")
        if jax.process_index() == 0:
            deadline = time.monotonic() + min(LEAVE_LAST_SECONDS, _peer_timeout / 2)
            for peer in range(1, jax.process_count()):
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                client.blocking_key_value_get(f"{ENDED_KEY}{peer}", remaining_ms)
            time.sleep(GONE_SECONDS)
    os._exit(code)
