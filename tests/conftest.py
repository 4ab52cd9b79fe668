"""Every test imports the project by its ordinary module names, with Paddle's environment set first.

The project root goes on sys.path once here (the tools' scripts do the same
through tools/_bootstrap.py), and tools/utils/paddle_env loads Paddle before
any test module imports paddle, as the tools do.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tools.utils.paddle_env  # noqa: E402

tools.utils.paddle_env.load()


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory):
    """`tools/trainer.py -m config.yaml` (the shipped sample, the defaults), once per test session:
    (its model_save_path, the trainer's CompletedProcess)."""
    import subprocess
    out = tmp_path_factory.mktemp("sample_model") / "model"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "trainer.py"), "-m",
                           os.path.join(ROOT, "config.yaml"), "-o", f"runner.model_save_path={out}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.fixture
def float64():
    """Paddle's default dtype float64 for the test (the reference tests' precision), restored afterwards."""
    from tools.utils.paddle_env import paddle
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    yield
    paddle.set_default_dtype(previous)


@pytest.fixture
def unwritable():
    """make(folder): the folder cannot be written any more, by root too (chattr +i; chmod for other users);
    the test is skipped where neither works. Undone afterwards."""
    import subprocess
    made = []

    def make(path):
        path.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        else:
            path.chmod(0o555)
        made.append(path)
        try:
            (path / "probe").write_text("")
        except OSError:
            return path
        pytest.skip("cannot make a folder unwritable here (no chattr +i)")

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)
