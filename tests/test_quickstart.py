"""tools/quickstart.py: pytest's own arguments pass through, and a stop reaches the tool it runs."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from tools import quickstart


@pytest.mark.parametrize("argv, command", [
    ([], ["tests"]),
    (["-k", "readme"], ["tests", "-k", "readme"]),
    (["-k", "readme", "tests/test_readme.py"], ["-k", "readme", "tests/test_readme.py"]),
    (["tests/test_readme.py::test_x", "-x"], ["tests/test_readme.py::test_x", "-x"]),
    (["--", "-k", "not slow"], ["tests", "-k", "not slow"]),
])
def test_pytest_arguments_pass_through_and_a_path_replaces_the_whole_suite(monkeypatch, argv, command):
    ran = []
    monkeypatch.setattr(quickstart, "ensure_env", lambda requirements: None)
    monkeypatch.setattr(quickstart, "run", ran.append)
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "test", *argv])
    quickstart.main()
    assert ran == [[quickstart.PY, "-m", "pytest", "-q", *command]]


CHILD = """
import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1] + ".stopped", "w").write(str(signum))
    sys.exit(7)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_sent_to_quickstart_reaches_the_tool_and_its_exit_is_quickstarts(tmp_path, signum):
    """A tool stops cleanly (it saves, one line) only if the signal reaches it; quickstart alone being killed
    left the trainer running as an orphan, and Ctrl-C's KeyboardInterrupt killed it before it saved."""
    (tmp_path / "child.py").write_text(CHILD)
    marker = str(tmp_path / "m")
    driver = (f"import sys; from tools import quickstart; "  # python -c from the project root imports tools
              f"quickstart.run([sys.executable, {str(tmp_path / 'child.py')!r}, {marker!r}])")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not os.path.exists(marker + ".ready") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)  # to quickstart only, not its process group
    _, err = proc.communicate(timeout=30)
    assert open(marker + ".stopped").read() == str(int(signum))
    assert proc.returncode == 7 and "Traceback" not in err, err
