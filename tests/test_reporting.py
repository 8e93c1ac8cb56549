"""The console: what a user sees when the output goes somewhere unusual."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_output_piped_into_head_ends_quietly():
    # Many more lines than a pipe buffer holds, so the writer meets the closed pipe.
    writer = ("from jaxmnist.runtime.reporting import log; from jaxmnist.apps.console import setup_console\n"
              "setup_console()\n"
              "for i in range(20000): log.info('line %d of a long report', i)\n"
              "print('still running', file=__import__('sys').stderr)\n")
    result = subprocess.run(f"{sys.executable} -c \"{writer}\" | head -n 1", shell=True, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "line 0 of a long report\n"
    assert result.stderr == "still running\n"  # no traceback, and the program went on to its end
