"""A sweep's runs: every combination of settings with every seed, each an ordinary training run.

A run is `python -m jaxmnist.train` with the sweep's common flags, its combination's settings, its
seed and its own workdir, named by what differs (`lr=3e-3_dropout=0.3_seed=1`), so that it can be
resumed, inspected and plotted on its own. Whether a run has finished is asked of its own records,
under the rule a resume obeys (workdir.recipe_differences). No JAX here.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import re
from pathlib import Path
from typing import Any, Sequence

from jaxmnist.config import Config, parse_config
from jaxmnist.errors import UserError
from jaxmnist.metrics import MetricsLog
from jaxmnist.runtime.workdir import check_workdir, recipe_differences

# The sweep sets these itself, per run: in the common flags or a grid they would be ambiguous.
OWN_FLAGS = ("workdir", "seed", "restart")
VALUE_PATTERN = re.compile(r"[A-Za-z0-9.+-]+")  # what a folder name may hold without quoting


class SweepError(UserError):
    """The sweep cannot run as given; the message is one sentence."""


Combination = dict[str, str]  # flag name (as --flag, without dashes) -> value, as the user wrote it


class Status(enum.Enum):
    NEW = "new"
    STARTED = "started"  # a run with the same recipe stopped before its last epoch: it resumes
    FINISHED = "finished"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep."""

    settings: Combination  # what differs between the sweep's combinations
    seed: int
    workdir: Path
    flags: tuple[str, ...]  # python -m jaxmnist.train's whole command line
    config: Config  # what those flags mean, for the finished rule and the table

    @property
    def name(self) -> str:
        return run_name(self.settings, self.seed)

    @property
    def combination(self) -> str:
        """What this run's combination sets, for tables and legends: `lr=3e-3, dropout=0.3`."""
        return label(self.settings) or "the common flags alone"


def run_name(settings: Combination, seed: int) -> str:
    """A run's workdir name, by what differs: `lr=3e-3_dropout=0.3_seed=1`."""
    return "_".join([*(f"{k}={v}" for k, v in settings.items()), f"seed={seed}"])


def label(settings: dict[str, Any]) -> str:
    """`lr=3e-3, dropout=0.3`: settings as a legend or a table reads them."""
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def parse_grid(specs: Sequence[str]) -> list[Combination]:
    """`--grid lr=1e-3,3e-3 --grid dropout=0,0.3` as every combination, the first flag varying slowest."""
    axes: dict[str, list[str]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        flag = name.strip().lstrip("-").replace("_", "-")
        if not values or not flag:
            raise SweepError(f"--grid {spec} should read NAME=VALUE,VALUE,... (for example --grid lr=1e-3,3e-3).")
        if flag in axes:
            raise SweepError(f"--grid {flag} is given twice; list all its values in one --grid.")
        axes[flag] = values.split(",")
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def plan(combinations: Sequence[Combination], seeds: Sequence[int], root: Path, common: Sequence[str]) -> list[Run]:
    """Every combination with every seed, each checked as `python -m jaxmnist.train` checks its
    flags (a bad value ends the sweep before any run starts, with the trainer's own sentence)."""
    _check_names(combinations, common)
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds lists a seed twice ({' '.join(map(str, seeds))}).")
    runs = []
    for settings, seed in itertools.product(combinations, seeds):
        name = run_name(settings, seed)
        flags = (*common, *_as_flags(settings), "--seed", str(seed), "--workdir", str(root / name))
        config = parse_config(list(flags), prog=f"python -m jaxmnist.sweep ({name})", description="")
        runs.append(Run(dict(settings), seed, root / name, flags, config))
    if len({run.name for run in runs}) != len(runs):
        raise SweepError("Two combinations of the sweep are the same; each must differ in a setting.")
    return runs


def _check_names(combinations: Sequence[Combination], common: Sequence[str]) -> None:
    """Every setting a flag of the trainer, none the sweep's own, none also in the common flags."""
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(Config)}
    for flag in OWN_FLAGS:
        if _mentions(common, flag):
            hint = "--seeds" if flag == "seed" else "--root" if flag == "workdir" else "a new --root"
            raise SweepError(f"The sweep sets --{flag} of each run itself; give {hint} to the sweep instead.")
    for settings in combinations:
        for name, value in settings.items():
            if name not in fields or name in OWN_FLAGS:
                what = "is set by the sweep itself" if name in OWN_FLAGS else "is not a flag of python -m jaxmnist.train"
                raise SweepError(f"The sweep's setting {name} {what}.")
            if _mentions(common, name):
                raise SweepError(f"--{name} is both in the sweep's settings and in the flags after --; give it once.")
            if not VALUE_PATTERN.fullmatch(value):
                raise SweepError(f"The value {value!r} of {name} cannot name a folder; use letters, digits and . + - only.")
            if fields[name].type == "bool" and value not in ("true", "false"):
                raise SweepError(f"{name} is on or off: its values are true and false, not {value!r}.")


def _mentions(flags: Sequence[str], name: str) -> bool:
    """Whether a command line sets --name (as --name, --name=VALUE or --no-name)."""
    return any(arg in (f"--{name}", f"--no-{name}") or arg.startswith(f"--{name}=") for arg in flags)


def _as_flags(settings: Combination) -> list[str]:
    """A combination as the trainer's flags: `--lr 3e-3`, and `--name` / `--no-name` for on/off."""
    flags = []
    for name, value in settings.items():
        flags += [f"--{name}" if value == "true" else f"--no-{name}"] if value in ("true", "false") else [f"--{name}", value]
    return flags


def status(run: Run) -> Status:
    """Whether a run is new, started or finished, from its own records. A folder that holds
    another recipe's run, or something that is not a run, is refused: nothing of it is touched."""
    check_workdir(str(run.workdir))
    try:
        recorded = json.loads((run.workdir / "config.json").read_text())["config"]
    except FileNotFoundError:
        return Status.STARTED if (run.workdir / "checkpoints").is_dir() else Status.NEW
    except (OSError, ValueError, KeyError, TypeError):
        raise SweepError(f"{run.workdir / 'config.json'} cannot be read as a run's record; move that folder away.") from None
    differing = recipe_differences(recorded, run.config)
    if differing:
        raise SweepError(f"{run.workdir} holds a run with other settings ({', '.join(differing)}); use another --root, "
                         "or move that folder away.")
    records = epoch_records(run)
    return Status.FINISHED if records and records[-1]["epoch"] == run.config.epochs else Status.STARTED


def epoch_records(run: Run) -> list[dict[str, Any]]:
    """The run's epoch records up to its --epochs (a longer run with the same recipe counts as far as asked)."""
    return [r for r in MetricsLog(run.workdir / "metrics.jsonl").records("epoch") if r["epoch"] <= run.config.epochs]


def differing_settings(recipes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each recorded recipe, the settings whose values are not the same in all of them, seed
    last: what a legend should name (`lr=0.003, dropout=0.3, seed=1`)."""
    names = [n for n in Config().recipe_dict() if n != "seed"] + ["seed"]
    defaults = Config().recipe_dict()
    varying = [n for n in names if len({json.dumps(r.get(n, defaults[n])) for r in recipes}) > 1]
    return [{n.replace("_", "-"): r.get(n, defaults[n]) for n in varying} for r in recipes]
