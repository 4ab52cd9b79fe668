"""Imported first by the benchmarks when they run as scripts: tools/_bootstrap.py's set-up from this folder (the
stop signals held until the command line handles them, the project root on sys.path)."""
import os
import sys

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOOLS)  # where _bootstrap.py is
import _bootstrap  # noqa: E402,F401

sys.path.remove(TOOLS)
