"""The one base class of every failure a user can cause or fix: a wrong path, damaged data, a
bad checkpoint, a busy workdir. Its message is one sentence; the command lines print it and exit
non-zero, never with a traceback. No imports, so the command lines can catch it before JAX loads."""


class UserError(Exception):
    """An expected failure: the message says what is wrong and what to do; exit_code is the status."""

    exit_code = 1
    # True when library threads are left waiting forever, so the command must end without the
    # interpreter's clean-up (which would join them) once the sentence is printed.
    leaves_threads_behind = False
