"""One line instead of a traceback when a tool runs under a Python without the project's packages.

tools/_bootstrap.py installs explain_missing as sys.excepthook: an uncaught
ModuleNotFoundError for one of PACKAGES (the usual cause: the system Python
instead of .venv/bin/python) becomes `error: ...` naming the package, the
Python and the command to use, and exit code 2. Any other error is shown as
Python shows it.
"""
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
# import name -> (pip name, the requirements file that pins it)
PACKAGES = {"paddle": ("paddlepaddle", "requirements.txt"), "numpy": ("numpy", "requirements.txt"),
            "yaml": ("PyYAML", "requirements.txt"), "sklearn": ("scikit-learn", "requirements.txt"),
            "tqdm": ("tqdm", "requirements.txt"), "google": ("protobuf", "requirements.txt"),
            "pandas": ("pandas", "requirements-dev.txt"), "matplotlib": ("matplotlib", "requirements-dev.txt"),
            "pytest": ("pytest", "requirements-dev.txt")}


def missing_message(name, script, prefix=sys.prefix, executable=sys.executable):
    """The one line for package `name` missing when `script` ran under the Python of `prefix`."""
    pip_name, requirements = PACKAGES[name]
    tool, python, activate = (_shown(p) for p in (script, os.path.join(VENV, "bin", "python"),
                                                   os.path.join(VENV, "bin", "activate")))
    here = f"{pip_name} is not installed for {executable}"
    if not os.path.exists(os.path.join(VENV, "bin", "python")):
        return (f"{here}: set up the project's environment with `python3 {_shown(os.path.join(ROOT, 'tools'))}/"
                f"quickstart.py demo` (it makes .venv with {requirements}), then run `{python} {tool} ...` or "
                f"`source {activate}` first")
    if os.path.realpath(prefix) != os.path.realpath(VENV):
        return f"{here}: run `{python} {tool} ...` or `source {activate}` first"
    pins = _shown(os.path.join(ROOT, requirements))
    return f"{here} (it is in {requirements}): run `{python} -m pip install -r {pins}`"


def _shown(path):
    """path relative to the working directory when it is below it, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if relative.startswith("..") else relative


def explain_missing(kind, error, trace):
    name = (getattr(error, "name", None) or "").split(".")[0]
    if not (issubclass(kind, ModuleNotFoundError) and name in PACKAGES):
        traceback.print_exception(kind, error, trace)
        return
    sys.stdout.flush()
    print(f"error: {missing_message(name, sys.argv[0])}", file=sys.stderr, flush=True)
    os._exit(2)
