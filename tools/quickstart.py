"""Set up a virtual environment and run the sample job or the tests.

    python3 tools/quickstart.py demo    # train on data/, evaluate hot and cold
    python3 tools/quickstart.py test    # the test suite (what CI runs)

Needs only Python 3 (3.9+) with venv. The environment lives in .venv/ and is
reused; packages are pinned in requirements*.txt.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PY = os.path.join(VENV, "bin", "python")


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        sys.exit(code)


def ensure_env(requirements):
    if not os.path.exists(PY):
        run([sys.executable, "-m", "venv", VENV])
    run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["demo", "test"])
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (test only)")
    args = ap.parse_args()
    if args.job == "demo":
        ensure_env("requirements.txt")
        run([PY, "tools/trainer.py", "-m", "config.yaml"])
        run([PY, "tools/infer_meta.py", "-m", "config.yaml", "--split", "both"])
        print("\nThe project's packages are in .venv: run the tools with .venv/bin/python (or `source "
              ".venv/bin/activate` first), e.g.\n    .venv/bin/python tools/trainer.py --help")
    else:
        ensure_env("requirements-dev.txt")
        run([PY, "-m", "pytest", "-q", "tests"] + args.pytest_args)


if __name__ == "__main__":
    main()
