"""Files as every command meets them: the one atomic write (a kill at any moment leaves the old
content or the new, never half of it), used by runs, the data cache, sweeps and evaluate's reports;
the check of a path flag before any work; and the lock a run holds on its workdir (a sweep on its
root). It imports nothing of jaxmnist's but the error type, so every layer may use it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from jaxmnist.errors import UserError

EMPTY_PATH = "must name a folder (it is empty: an unset shell variable?)"
LOCK_FILE = ".jaxmnist.lock"  # a run's, in its workdir


def replace_file(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write a whole file or none of it: into a file beside it, forced to the disk, then renamed
    over it, so a kill at any moment leaves the old content or the new, never an empty or half
    file. A symbolic link at path is refused, never followed."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link, not a file jaxmnist wrote; move it away and run again.")
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # one per process: two writers never mix
    data = content.encode() if isinstance(content, str) else content
    try:
        with naming(path, partial), os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                                      mode), "wb") as file:
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
def naming(path: Path, written_as: Path | None = None):
    """An OSError inside (a full disk meets write(), flush() or fsync(), which name no file) names
    path, also where it names written_as, the file path is written as before its rename."""
    try:
        yield
    except OSError as error:
        if error.filename is None or (written_as is not None and error.filename == str(written_as)):
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise


def sync_folder(folder: Path) -> None:
    """Force a folder's entries (a rename, a new file) to the disk."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_path_argument(flag: str, value: str | None, required: bool = False) -> None:
    """Refuse in one sentence a path the system cannot even look up (a name too long for the file
    system, a loop of links, a folder not searchable, a name the locale cannot decode); later it
    would end in a traceback, or worse, midway through a run. A path that does not exist passes:
    each command says what it needs there. An empty one is refused when required, and otherwise
    means the flag is unset."""
    if value is None or not str(value).strip():
        if required:
            raise UserError(f"{flag} {EMPTY_PATH}.")
        return
    value = str(value)
    try:
        os.path.abspath(value).encode("utf-8")  # the current folder's name too, for a relative path
    except UnicodeEncodeError:  # bytes this locale cannot decode, kept as surrogates by Python
        readable = os.fsencode(os.path.abspath(value)).decode("utf-8", errors="replace")
        raise UserError(f"{flag} {readable} cannot be used under this locale ({sys.getfilesystemencoding()}): "
                        "Orbax cannot write the name; run with a UTF-8 locale (LC_ALL=C.UTF-8, or PYTHONUTF8=1), "
                        "or choose an ASCII path.") from None
    try:
        os.stat(value)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        raise UserError(f"{flag} {shown(value)} cannot be used ({error.strerror}).") from None


def shown(value: str) -> str:
    """A path as a message shows it: whole up to 80 characters, else its start and its length."""
    return value if len(value) <= 80 else f"{value[:60]}...({len(value)} characters)"


@contextlib.contextmanager
def exclusive(path: Path, flag: str = "--workdir", holder: str = "jaxmnist run", lock_file: str = LOCK_FILE) -> Iterator[None]:
    """Hold the folder's lock for a whole run (or a sweep's root for the whole sweep): a second
    writer is refused at once, naming the holder. The system's own lock (flock) dies with its
    process, so a killed run never blocks the next; the file, opened without following a link (a
    link planted there never leads to its target), keeps who holds it, for the message."""
    lock_path = path / lock_file
    if lock_path.is_symlink() or lock_path.is_dir():
        raise UserError(f"{lock_path} is a link or a folder, not jaxmnist's lock file; move it away and run again.")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # no link, even one made now
    except OSError as error:
        raise UserError(f"{lock_path} cannot be opened ({error.strerror}).") from None
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = handle.read().strip() or "another process"
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{flag} {path} is in use by another {holder} ({owner}); wait for it to "
                                   f"finish, or use another {flag}.") from None
            raise UserError(f"{flag} {path} cannot be locked ({error.strerror}).") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield  # closing the file releases the lock; the file stays, harmless and reused
