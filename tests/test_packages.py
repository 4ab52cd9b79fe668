"""A tool run by a Python without the project's packages says so in one line (tools/_packages.py)."""
import os
import re
import subprocess
import sys

import pytest

from tools import _packages
from helpers import ROOT

SCRIPTS = sorted(name for name in os.listdir(os.path.join(ROOT, "tools"))
                 if name.endswith(".py") and "import _bootstrap" in open(os.path.join(ROOT, "tools", name)).read())


def test_every_tool_is_covered():
    assert {"trainer.py", "infer_meta.py", "expand.py", "score.py", "gates.py", "preprocess.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_tool_without_its_packages_says_which_and_what_to_run(script):
    """python -S: no site-packages, as the system Python without the requirements."""
    done = subprocess.run([sys.executable, "-S", os.path.join("tools", script), "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    name = re.match(r"error: (\S+) is not installed for ", done.stderr).group(1)
    module = next(m for m, (pip_name, _) in _packages.PACKAGES.items() if pip_name == name)
    expected = _packages.missing_message(module, os.path.join("tools", script), prefix=sys.base_prefix)
    assert done.stderr == f"error: {expected}\n"


def test_the_line_names_the_python_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(_packages, "VENV", str(tmp_path / "none"))
    assert _packages.missing_message("paddle", "tools/trainer.py", "/usr", "/usr/bin/python3") == (
        f"paddlepaddle is not installed for /usr/bin/python3: set up the project's environment with `python3 "
        f"tools/quickstart.py demo` (it makes .venv with requirements.txt), then run `{tmp_path}/none/bin/python "
        f"tools/trainer.py ...` or `source {tmp_path}/none/bin/activate` first")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    monkeypatch.setattr(_packages, "VENV", str(venv))
    assert _packages.missing_message("yaml", "tools/expand.py", "/usr", "/usr/bin/python3") == (
        f"PyYAML is not installed for /usr/bin/python3: run `{venv}/bin/python tools/expand.py ...` or "
        f"`source {venv}/bin/activate` first")
    assert _packages.missing_message("pandas", "tools/import_pickle.py", str(venv), f"{venv}/bin/python") == (
        f"pandas is not installed for {venv}/bin/python (it is in requirements-dev.txt): run "
        f"`{venv}/bin/python -m pip install -r requirements-dev.txt`")
