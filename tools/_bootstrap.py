"""Imported first by the command lines in tools/ when they run as scripts: holds the stop signals until the
command line can handle them, and puts the project root on sys.path.

SIGTERM and SIGINT (Ctrl-C) are blocked from here until tools/utils/cli.run
has its handlers: one that arrives while the tool's modules load (numpy,
scikit-learn, pandas: a second or more) waits, and then ends the tool with
one line and 143 / 130 instead of a KeyboardInterrupt traceback or a silent
death. A script's own folder (tools/) is on sys.path and the project root is
not; with it, the project's modules import by their ordinary names
(tools.utils.*, net, dygraph_model, models.*), as they do in the tests
(tests/conftest.py).
"""
import os
import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import _packages  # noqa: E402  (a missing package becomes one line: tools/_packages.py)

sys.excepthook = _packages.explain_missing
