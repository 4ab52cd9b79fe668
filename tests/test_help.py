"""Each tool's --help ends with examples of its own, and its -o example is one of its own keys."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.parametrize("tool", ["trainer", "infer_meta", "expand", "score", "gates"])
def test_help_shows_the_tools_own_examples(tool):
    done = subprocess.run([sys.executable, os.path.join("tools", f"{tool}.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    examples = done.stdout.split("\nexamples:\n")[1].splitlines()
    commands = [line.strip() for line in examples if line.strip().startswith("python")]
    assert len(commands) >= 3 and all(f"tools/{tool}.py" in command for command in commands), examples
    if tool in ("infer_meta", "expand"):  # not the trainer's -o runner.epochs=2
        assert "runner.epochs" not in done.stdout.split("\nexamples:\n")[0]
