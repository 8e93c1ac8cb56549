"""The `jaxmnist` console command: declared in pyproject.toml, and each subcommand is its python -m module."""

import importlib
import tomllib
from pathlib import Path

import pytest

from jaxmnist import cli

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_puts_jaxmnist_on_the_path():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["jaxmnist"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_shows_its_own_flags(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    assert f"python -m jaxmnist.{command}" in capsys.readouterr().out  # the module's own parser answered


def test_flags_reach_the_command(tmp_path, capsys):
    assert cli.main(["plot", "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"{tmp_path} has no metrics.jsonl: is it a jaxmnist workdir?"


def test_an_unknown_or_missing_command_is_one_sentence_and_exit_2(capsys):
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err == ("jaxmnist: unknown command 'trian'; choose one of train, evaluate, predict, "
                                       "export, serve, plot, summary, sweep.\n")
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: jaxmnist {train,evaluate,predict,export,serve,plot,summary,sweep}")
    assert cli.main(["--help"]) == 0
    assert "plot      a run's figures" in capsys.readouterr().out


def test_ctrl_c_while_a_command_loads_stops_it_once_loaded(monkeypatch, capsys):
    """JAX takes seconds to import, and an interrupt inside its extension's initialisation breaks
    the import (or is lost): Ctrl-C then waits for the loading, and the command does not run."""
    import os
    import signal

    real_import = importlib.import_module

    def interrupted(name, package=None):
        module = real_import(name, package)
        if name == "jaxmnist.apps.evaluate":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, in the middle of loading
        return module

    ran = []
    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    monkeypatch.setattr("jaxmnist.apps.evaluate.main", lambda argv: ran.append(argv) or 0)
    assert cli.main(["evaluate", "--workdir", "runs/mnist"]) == 130
    assert capsys.readouterr().err == "Stopped.\n" and ran == []


def test_each_python_m_entry_point_runs_its_command():
    import subprocess
    import sys
    for command in cli.COMMANDS:
        result = subprocess.run([sys.executable, "-m", f"jaxmnist.{command}", "--help"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and f"python -m jaxmnist.{command}" in result.stdout, (command, result.stderr)


def test_python_m_jaxmnist_is_the_jaxmnist_command_and_says_its_version():
    import subprocess
    import sys
    from importlib import metadata

    module = subprocess.run([sys.executable, "-m", "jaxmnist", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    command = subprocess.run([sys.executable, "-c", "import sys; from jaxmnist.cli import main; sys.exit(main())", "--help"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert module.returncode == command.returncode == 0 and module.stdout == command.stdout and "train" in module.stdout
    version = subprocess.run([sys.executable, "-m", "jaxmnist", "--version"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    assert version.returncode == 0 and version.stdout == f"jaxmnist {metadata.version('jaxmnist')}\n"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_during_any_command_is_stopped_and_128_plus_the_signal(signum, capsys):
    """evaluate, plot, predict, summary and export died silently on SIGTERM or SIGHUP (143, 129)."""
    import os
    import signal

    from jaxmnist.apps.console import run_command, setup_console

    number = getattr(signal, signum)
    setup_console()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    assert run_command(lambda: os.kill(os.getpid(), number) or __import__("time").sleep(5)) == 128 + number
    assert capsys.readouterr().err == "Stopped.\n"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back


def test_a_finished_command_ignores_a_stop_while_the_process_ends():
    """A SIGTERM half a second after a run's last line turned a finished run into a silent 143."""
    import subprocess
    import sys

    script = ("import signal; from jaxmnist import cli; cli.run('summary', ['--model', 'lab'], as_program=True); "
              "print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("True True"), result.stderr
