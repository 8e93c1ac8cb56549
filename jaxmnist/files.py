"""Writing a file so that a kill at any moment leaves the old content or the new, never half of
it: the one atomic write every part of jaxmnist uses (runs, the data cache, sweeps, evaluate's
reports). It imports nothing of jaxmnist's but the error type, so every layer may use it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from jaxmnist.errors import UserError


def replace_file(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write a whole file or none of it: into a file beside it, forced to the disk, then renamed
    over it, so a kill at any moment leaves the old content or the new, never an empty or half
    file. A symbolic link at path is refused, never followed."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link, not a file jaxmnist wrote; move it away and run again.")
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # one per process: two writers never mix
    data = content.encode() if isinstance(content, str) else content
    try:
        with naming(path), os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode),
                                      "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        sync_folder(path.parent)  # the rename itself reaches the disk too
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()  # gone after the rename; left only by a failed write


def append_line(path: Path, line: str) -> None:
    """Add one line at the end of a file, never through a symbolic link."""
    with naming(path), os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a") as file:
        file.write(line)


@contextlib.contextmanager
def naming(path: Path):
    """An OSError inside (a full disk meets write(), flush() or fsync(), which name no file) names path."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise


def sync_folder(folder: Path) -> None:
    """Force a folder's entries (a rename, a new file) to the disk."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
