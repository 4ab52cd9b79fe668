"""Imported first by the command lines in tools/ when they run as scripts: puts the project root on sys.path.

A script's own folder (tools/) is on sys.path and the project root is not;
with it, the project's modules import by their ordinary names (tools.utils.*,
net, dygraph_model, models.*), as they do in the tests (tests/conftest.py).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import _packages  # noqa: E402  (a missing package becomes one line: tools/_packages.py)

sys.excepthook = _packages.explain_missing
