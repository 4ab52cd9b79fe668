"""Set up a virtual environment and run the sample job or the tests.

    python3 tools/quickstart.py demo    # train on data/, evaluate hot and cold
    python3 tools/quickstart.py test    # the test suite (what CI runs)
    python3 tools/quickstart.py test -k readme tests/test_readme.py   # pytest's own arguments: a subset

Needs only Python 3 (3.9+) with venv. The environment lives in .venv/ and is
reused; packages are pinned in requirements*.txt.
"""
import argparse
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PY = os.path.join(VENV, "bin", "python")


def run(cmd):
    """Run cmd; a Ctrl-C or SIGTERM goes to it (a tool then saves and stops with one line) and its exit is ours."""
    print("+", " ".join(cmd), flush=True)
    child = subprocess.Popen(cmd, cwd=ROOT)
    previous = {s: signal.signal(s, lambda signum, frame: child.send_signal(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code:
        sys.exit(code if code > 0 else 128 - code)


def ensure_env(requirements):
    if not os.path.exists(PY):
        run([sys.executable, "-m", "venv", VENV])
    run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["demo", "test"])
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="pytest's own arguments, options and paths "
                    "(test only; without a path: tests/)")
    args = ap.parse_args()
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    if extra and args.job == "demo":
        ap.error(f"demo takes no arguments, got {extra}")
    if args.job == "demo":
        ensure_env("requirements.txt")
        run([PY, "tools/trainer.py", "-m", "config.yaml"])
        run([PY, "tools/infer_meta.py", "-m", "config.yaml", "--split", "both"])
        print("\nThe project's packages are in .venv: run the tools with .venv/bin/python (or `source "
              ".venv/bin/activate` first), e.g.\n    .venv/bin/python tools/trainer.py --help")
    else:
        ensure_env("requirements-dev.txt")
        paths = [a for a in extra if os.path.exists(os.path.join(ROOT, a.split("::")[0]))]
        run([PY, "-m", "pytest", "-q"] + ([] if paths else ["tests"]) + extra)


if __name__ == "__main__":
    main()
