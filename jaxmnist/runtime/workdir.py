"""The run's folder is the user's: what may be written there, by whom, and what --restart removes.

A folder is a jaxmnist run when its config.json carries RUN_MARKER (or, its config.json lost, when
it holds checkpoints with a meta item). Nothing here imports JAX, so these checks run before any
expensive work, and before anything is written. replace_file is the one atomic write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from jaxmnist.config import EMPTY_PATH, Config, flag
from jaxmnist.errors import UserError

RUN_MARKER = {"written_by": "jaxmnist"}
FORMAT = 3  # of config.json and every checkpoint's meta; another is refused (check_format), never migrated
LOCK_FILE = ".jaxmnist.lock"
# Everything a run and its tools write, and so everything --restart may remove; nothing else.
FOLDERS = {"checkpoints", "damaged-checkpoints", "tensorboard", "eval", "plots", "profile"}  # the others are files
RUN_OUTPUTS = ("checkpoints", "damaged-checkpoints", "metrics.jsonl", "tensorboard", "eval", "plots", "profile",
               "config.json")

# Characters the deepest file of a run adds below its workdir, with room to spare: an Orbax save's
# checkpoints/<step>.orbax-checkpoint-tmp-<time>/opt_state/ocdbt.process_0/d/<32 hex digits>.
DEEPEST_FILE = 200


class WorkdirError(UserError):
    """The workdir cannot be used; the message is one sentence for the user."""


def check_workdir(workdir: str) -> Path:
    """The absolute workdir, if it is one this run may write into: missing, empty, or a jaxmnist run.

    Writes nothing: it is called before the data is loaded, so a refused run changes no file.
    """
    path = Path(workdir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    limit = os.pathconf(existing, "PC_PATH_MAX") if existing.is_dir() else 4096
    if len(os.fsencode(path)) + DEEPEST_FILE > limit:  # else an epoch trains, then its save fails
        raise WorkdirError(f"--workdir {_shown(workdir)} is {len(os.fsencode(path)):,} characters long; the files a run "
                           f"writes inside it need about {DEEPEST_FILE} more, and the system allows {limit:,}: choose a "
                           "shorter path.")
    if path.is_symlink() and not path.exists():
        raise WorkdirError(f"--workdir {workdir} is a symbolic link to {os.readlink(path)}, which does not exist; "
                           "create that folder, or give another --workdir.")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory.")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise WorkdirError(f"--workdir {workdir} is not writable.")
        if not is_run(path) and not _only_empty_leftovers(path):
            raise WorkdirError(f"--workdir {workdir} holds files that are not a jaxmnist run; give an empty or new folder.")
        for name in RUN_OUTPUTS:
            target = path / name
            if target.is_symlink():  # writing through it would change a file the run never made
                raise WorkdirError(f"{target} is a symbolic link, not a file of the run; move it away and run again.")
            if target.exists() and target.is_dir() != (name in FOLDERS):
                kind = "folder" if name in FOLDERS else "file"
                raise WorkdirError(f"{target} should be a {kind}; move it away and run again.")
        return path
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} cannot be created ({parent} is not a writable folder).")
    return path


def check_path_argument(flag: str, value: str | None, required: bool = False) -> None:
    """Refuse in one sentence a path the system cannot even look up (a name too long for the file
    system, a loop of links, a folder not searchable, a name the locale cannot decode); later it
    would end in a traceback, or worse, midway through a run. A path
    that does not exist passes: each command says what it needs there. An empty one is refused
    when required, and otherwise means the flag is unset."""
    if value is None or not str(value).strip():
        if required:
            raise WorkdirError(f"{flag} {EMPTY_PATH}.")
        return
    value = str(value)
    try:
        os.path.abspath(value).encode("utf-8")  # the current folder's name too, for a relative path
    except UnicodeEncodeError:  # bytes this locale cannot decode, kept as surrogates by Python
        readable = os.fsencode(os.path.abspath(value)).decode("utf-8", errors="replace")
        raise WorkdirError(f"{flag} {readable} cannot be used under this locale ({sys.getfilesystemencoding()}): "
                           "Orbax cannot write the name; run with a UTF-8 locale (LC_ALL=C.UTF-8, or PYTHONUTF8=1), "
                           "or choose an ASCII path.") from None
    try:
        os.stat(value)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        raise WorkdirError(f"{flag} {_shown(value)} cannot be used ({error.strerror}).") from None


def _shown(value: str) -> str:
    """A path as a message shows it: whole up to 80 characters, else its start and its length."""
    return value if len(value) <= 80 else f"{value[:60]}...({len(value)} characters)"


def is_run(path: Path) -> bool:
    """Whether a folder was written by jaxmnist: its config.json says so, or (a config.json lost)
    its checkpoints hold a run's meta item."""
    try:
        record = json.loads((path / "config.json").read_text())
        if isinstance(record, dict) and record.get("written_by") == RUN_MARKER["written_by"]:
            return True
    except (OSError, ValueError):
        pass
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any((step / "meta").is_dir() for step in checkpoints.iterdir() if step.name.isdigit())


def recorded_data(path: Path) -> dict[str, str]:
    """The data flags (--data-dir or --idx-dir) a run in path recorded in its config.json, relative
    ones joined to the folder it was started from: what resuming it without them reads."""
    config, cwd = _recorded(path)
    return {name: where_recorded(config[name], cwd) for name in ("data_dir", "idx_dir") if config.get(name)}


def check_same_dataset(path: Path, dataset: str, workdir: str) -> None:
    """Before any data is read: a run of another --dataset is refused naming the flag that resumes it
    (read first, another dataset's files would fail on their sizes or labels, not on the reason)."""
    recorded = _recorded(path)[0].get("dataset")
    if recorded is not None and recorded != dataset:
        raise WorkdirError(f"{workdir} holds a run of --dataset {recorded}, and this one is of {dataset}: add --dataset "
                           f"{recorded} to resume it, or use another --workdir (--restart discards that run).")


def _recorded(path: Path) -> tuple[dict[str, Any], str | None]:
    """config.json's settings and start folder; ({}, None) where there is none to read."""
    try:
        record = json.loads((path / "config.json").read_text())
        return dict(record["config"]), record.get("cwd")
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None


def where_recorded(path: str | None, cwd: str | None) -> str | None:
    """A path a run recorded, relative ones joined to the folder it was recorded in (when known)."""
    if path is None or cwd is None or Path(path).expanduser().is_absolute():
        return path
    return str(Path(cwd) / path)


def check_format(record: dict[str, Any], what: str) -> None:
    """Refuse a record (config.json, a checkpoint's meta) of another format: read as this one, its
    numbers could be misread without a word. Records from before the field existed are format 1."""
    saved = record.get("format", 1)
    if saved != FORMAT or type(saved) is not int:  # "2", edited by hand, is not format 2
        shown = saved if type(saved) is int else f"{saved!r} (not a format number)"
        raise WorkdirError(f"{what} are of jaxmnist's format {shown}, and this jaxmnist reads format {FORMAT}; use the "
                           "jaxmnist that wrote them, or --restart to train afresh.")


def _only_empty_leftovers(path: Path) -> bool:
    """Whether a folder holds nothing but what a run stopped before its first save leaves: the lock
    file and empty folders of its own (an empty checkpoints/)."""
    return all(p.name == LOCK_FILE or (p.name in RUN_OUTPUTS and p.is_dir() and not any(p.iterdir()))
               for p in path.iterdir())


def create(path: Path) -> bool:
    """Make the workdir; True when this call created it (so a failed run can take it away again)."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        raise WorkdirError(f"--workdir {path} cannot be created ({error.strerror}).") from None


def remove_if_unused(path: Path) -> None:
    """Undo create() for a run that failed before writing anything: only an empty folder goes."""
    with contextlib.suppress(OSError):
        if _only_empty_leftovers(path):
            for leftover in path.iterdir():
                if leftover.is_dir():
                    leftover.rmdir()
                else:
                    leftover.unlink()
            path.rmdir()


@contextlib.contextmanager
def exclusive(path: Path, flag: str = "--workdir", holder: str = "jaxmnist run", lock_file: str = LOCK_FILE) -> Iterator[None]:
    """Hold the workdir's lock for a whole run (or a sweep's root for the whole sweep): a second
    writer is refused at once, in one sentence naming the holder.

    The operating system's own lock (flock): it dies with the process that held it, so a killed run
    never blocks the next. The file keeps who holds it, for the message. It is opened without
    following a symbolic link, so a link planted there never leads the run to overwrite its target.
    """
    lock_path = path / lock_file
    if lock_path.is_symlink() or lock_path.is_dir():
        raise WorkdirError(f"{lock_path} is a link or a folder, not jaxmnist's lock file; move it away and run again.")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # no link, even one made now
    except OSError as error:
        raise WorkdirError(f"{lock_path} cannot be opened ({error.strerror}).") from None
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = handle.read().strip() or "another process"
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise WorkdirError(f"{flag} {path} is in use by another {holder} ({owner}); wait for it to "
                                   f"finish, or use another {flag}.") from None
            raise WorkdirError(f"{flag} {path} cannot be locked ({error.strerror}).") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield  # closing the file releases the lock; the file stays, harmless and reused


def discard_previous_run(path: Path) -> list[str]:
    """--restart: remove what an earlier run and its tools wrote (RUN_OUTPUTS), nothing else."""
    removed = []
    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    return removed


def recipe_differences(saved: dict[str, Any], config: Config) -> list[str]:
    """The recorded recipe's settings that config changes, as '--flag old -> new'; empty when a
    resume may continue the run. More --epochs may continue a step schedule (its decay ignores the
    total), not a cosine one."""
    current = config.recipe_dict()
    return [f"{flag(name)} {saved.get(name)} -> {current[name]}" for name in current
            if saved.get(name) != current[name] and not (name == "epochs" and config.schedule == "step")]


def check_resumable(saved: dict[str, Any], config: Config) -> None:
    """Refuse to continue a run whose recorded recipe differs: it would compute other numbers."""
    differing = recipe_differences(saved, config)
    if differing:
        raise WorkdirError(
            f"{config.workdir} holds a run with different settings ({', '.join(differing)}); "
            "use another --workdir, or --restart to discard that run."
        )
