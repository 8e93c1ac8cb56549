"""The run's folder is the user's: what may be written there, by whom, and what --restart removes.

A folder is a jaxmnist run when its config.json carries RUN_MARKER (or, its config.json lost, when
it holds checkpoints with a meta item). Nothing here imports JAX, so these checks run before any
expensive work, and before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from jaxmnist.config import Config, flag
from jaxmnist.errors import UserError
from jaxmnist.files import LOCK_FILE, check_path_argument, shown

RUN_MARKER = {"written_by": "jaxmnist"}
FORMAT = 3  # of config.json and every checkpoint's meta; another is refused (check_format), never migrated
# Everything a run and its tools write, and so everything --restart may remove; nothing else.
FOLDERS = {"checkpoints", "damaged-checkpoints", "tensorboard", "eval", "plots", "profile"}  # the others are files
RUN_OUTPUTS = ("checkpoints", "damaged-checkpoints", "metrics.jsonl", "tensorboard", "eval", "plots", "profile",
               "config.json")
# Characters the deepest file of a run adds below its workdir, with room to spare: an Orbax save's
# checkpoints/<step>.orbax-checkpoint-tmp-<time>/opt_state/ocdbt.process_0/d/<32 hex digits>.
DEEPEST_FILE = 200


class WorkdirError(UserError):
    """The workdir cannot be used; the message is one sentence for the user."""


def check_for_run(config: Config, data_given: bool) -> tuple[Path, Config]:
    """The run's absolute folder, if this run may write there, and its config: resuming without data
    flags reads the data the run recorded. A run of another --dataset is refused before any data is
    read (another dataset's files would fail on their sizes, not on the reason). Writes nothing."""
    for name in ("workdir", "data_dir", "idx_dir", "cache_dir"):
        check_path_argument(flag(name), getattr(config, name))
    path = check_workdir(config.workdir)
    recorded, cwd = _recorded(path)
    if config.restart:
        return path, config
    if recorded.get("dataset") not in (None, config.dataset):
        raise WorkdirError(f"{config.workdir} holds a run of --dataset {recorded['dataset']}, and this one is of "
                           f"{config.dataset}: add --dataset {recorded['dataset']} to resume it, or use another "
                           "--workdir (--restart discards that run).")
    found = {name: where_recorded(recorded[name], cwd) for name in ("data_dir", "idx_dir") if recorded.get(name)}
    if found and not data_given and config.data_dir is None and config.idx_dir is None:
        logging.getLogger("jaxmnist").info("Reading the data this run recorded: %s", next(iter(found.values())))
        config = dataclasses.replace(config, **found)
    return path, config


def check_workdir(workdir: str) -> Path:
    """The absolute workdir, if it is one a run may write into: missing, empty, or a jaxmnist run."""
    path = Path(workdir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    limit = os.pathconf(existing, "PC_PATH_MAX") if existing.is_dir() else 4096
    if len(os.fsencode(path)) + DEEPEST_FILE > limit:  # else an epoch trains, then its save fails
        raise WorkdirError(f"--workdir {shown(workdir)} is {len(os.fsencode(path)):,} characters long; the files a run "
                           f"writes inside it need about {DEEPEST_FILE} more, and the system allows {limit:,}: choose a "
                           "shorter path.")
    if path.is_symlink() and not path.exists():
        raise WorkdirError(f"--workdir {workdir} is a symbolic link to {os.readlink(path)}, which does not exist; "
                           "create that folder, or give another --workdir.")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory.")
    if not path.is_dir():
        parent = next(p for p in path.parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise WorkdirError(f"--workdir {workdir} cannot be created ({parent} is not a writable folder).")
        return path
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable.")
    if not is_run(path) and not _only_empty_leftovers(path):
        raise WorkdirError(f"--workdir {workdir} holds files that are not a jaxmnist run; give an empty or new folder.")
    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_symlink():  # writing through it would change a file the run never made
            raise WorkdirError(f"{target} is a symbolic link, not a file of the run; move it away and run again.")
        if target.exists() and target.is_dir() != (name in FOLDERS):
            raise WorkdirError(f"{target} should be a {'folder' if name in FOLDERS else 'file'}; move it away and run "
                               "again.")
    return path


def is_run(path: Path) -> bool:
    """Whether jaxmnist wrote the folder: its config.json says so, or its checkpoints hold a run's meta item."""
    try:
        record = json.loads((path / "config.json").read_text())
        if isinstance(record, dict) and record.get("written_by") == RUN_MARKER["written_by"]:
            return True
    except (OSError, ValueError):
        pass
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any((step / "meta").is_dir() for step in checkpoints.iterdir() if step.name.isdigit())


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
        shown_format = saved if type(saved) is int else f"{saved!r} (not a format number)"
        raise WorkdirError(f"{what} are of jaxmnist's format {shown_format}, and this jaxmnist reads format {FORMAT}; use "
                           "the jaxmnist that wrote them, or --restart to train afresh.")


def _only_empty_leftovers(path: Path) -> bool:
    """Whether a folder holds nothing but what a run stopped before its first save leaves: the lock
    file and empty folders of its own (an empty checkpoints/)."""
    return all(p.name == LOCK_FILE or (p.name in RUN_OUTPUTS and p.is_dir() and not any(p.iterdir()))
               for p in path.iterdir())


@contextlib.contextmanager
def created(path: Path) -> Iterator[None]:
    """Make the workdir if it is missing; one this made and a failed run left empty is taken away again."""
    try:
        path.mkdir(parents=True)
        made = True
    except FileExistsError:
        made = False
    except OSError as error:
        raise WorkdirError(f"--workdir {path} cannot be created ({error.strerror}).") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if made and _only_empty_leftovers(path):
                shutil.rmtree(path)


def discard_previous_run(path: Path) -> list[str]:
    """--restart: remove what an earlier run and its tools wrote (RUN_OUTPUTS), nothing else."""
    removed = [name for name in RUN_OUTPUTS if (path / name).exists() or (path / name).is_symlink()]
    for target in (path / name for name in removed):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
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
        raise WorkdirError(f"{config.workdir} holds a run with different settings ({', '.join(differing)}); use another "
                           "--workdir, or --restart to discard that run.")
