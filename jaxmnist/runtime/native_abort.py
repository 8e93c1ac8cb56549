"""jax.distributed's fatal abort, told in one sentence.

When jax.distributed gives up on a multi-process run (a peer stopped answering, the coordinator is
gone, the others never came), its C++ runtime logs an absl FATAL line with a stack trace and
aborts the process: no Python code runs after it. So in a multi-process run this process's stderr
flows through a small child process running this module (`guard_stderr`), which passes every line
on unchanged, except that the runtime's records leading to a FATAL one, and all that follows it,
are replaced by one sentence saying what happened and what to do. The process still ends with the
abort's exit status (134).

The patterns are those of jaxlib 0.10's coordination service; a record they do not recognize is
passed on as it is, so a newer jaxlib can only make the output longer, never hide an error.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from typing import Iterator

# An absl record of jax.distributed's runtime: "E1129 17:18:08.115540   13974 client.h:80] ..."
RUNTIME_RECORD = re.compile(
    rb"^[IWEF]\d{4} [\d:.]+\s+\d+ (coordination_service\w*|preemption_sync_manager|client|distributed\w*)\.(cc|h):\d+\]")
FATAL = re.compile(rb"^F\d{4} ")
HOLD_SECONDS = 1  # a runtime record and the lines after it wait this long for a FATAL record to follow
JOINING = b"RegisterTask"  # the RPC named when the process never joined the others


def guard_stderr(process_index: str, num_processes: int, join_timeout: float, peer_timeout: float) -> None:
    """From now on, this process's stderr (file descriptor 2) passes through the guard."""
    sys.stderr.flush()
    guard = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "jaxmnist.runtime.native_abort", process_index, str(num_processes),
         f"{join_timeout:g}", f"{peer_timeout:g}"],
        stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), start_new_session=True)  # Ctrl-C is for us, not it
    os.dup2(guard.stdin.fileno(), 2)  # our stderr is now the pipe; the guard ends when the last writer has gone
    guard.stdin.close()


def one_sentence(fatal_lines: list[bytes], process: str, num_processes: str, join_timeout: str,
                 peer_timeout: str) -> str:
    """What a FATAL abort of jax.distributed means for the user."""
    who = f"Process {process} of {num_processes}" if process else "This process"
    if any(JOINING in line for line in fatal_lines):
        return (f"{who} could not join the run's other processes within --join-timeout {join_timeout} s; start all "
                f"{num_processes} with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, and a JAX_PROCESS_ID "
                f"each from 0 to {int(num_processes) - 1}.")
    return (f"{who} stopped: another process of the run stopped answering (killed, or its machine gone; a silent "
            f"one is given --peer-timeout {peer_timeout} s); what was saved is intact, start all {num_processes} "
            "processes again to resume.")


def main(process: str, num_processes: str, join_timeout: str, peer_timeout: str) -> None:
    sink = sys.stdout.buffer
    held: list[bytes] = []  # a runtime record and what followed it, until a FATAL or HOLD_SECONDS
    held_since = 0.0
    fatal: list[bytes] = []  # the FATAL record and what followed it
    for line in _lines(sys.stdin.buffer.fileno()):
        if fatal:
            fatal.append(line or b"")
            continue
        if held and (line is None or time.monotonic() - held_since > HOLD_SECONDS):  # not a prelude to a FATAL
            sink.writelines(held)
            sink.flush()
            held = []
        if line is None:
            continue
        if RUNTIME_RECORD.match(line) and FATAL.match(line):
            fatal, held = [line], []
        elif held or RUNTIME_RECORD.match(line):
            held_since = held_since if held else time.monotonic()
            held.append(line)
        else:
            sink.write(line)
            sink.flush()
    sink.writelines(held)
    if fatal:
        sink.write(one_sentence(fatal, process, num_processes, join_timeout, peer_timeout).encode() + b"\n")
    sink.flush()


def _lines(fd: int) -> Iterator[bytes | None]:
    """The stream's lines as they come, and None whenever HOLD_SECONDS pass without one."""
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], HOLD_SECONDS)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        yield from (line + b"\n" for line in complete)
    if pending:
        yield pending


if __name__ == "__main__":
    main(*sys.argv[1:])
