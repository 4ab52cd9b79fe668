"""Every test imports the project by its ordinary module names, with Paddle's environment set first.

The project root goes on sys.path once here (the tools' scripts do the same
through tools/_bootstrap.py), and tools/utils/paddle_env is imported before
any test module imports paddle, as the tools do.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tools.utils.paddle_env  # noqa: E402,F401
