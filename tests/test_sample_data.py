"""The shipped sample data in data/ is what the documented command regenerates, byte for byte."""
import filecmp
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
# The readme's regeneration command (kept in one place: readme.md quotes these arguments).
GENERATE = ["tools/make_synthetic.py", "--scale", "sample", "--seed", "2021"]
PREPROCESS = ["tools/preprocess.py", "--hot-threshold", "60", "--quiet"]


def shipped_files():
    return sorted(os.path.relpath(os.path.join(d, f), DATA) for d, _, files in os.walk(DATA) for f in files)


@pytest.mark.skipif(not os.path.isdir(DATA), reason="no data/ folder")
def test_regenerating_the_sample_gives_identical_files(tmp_path):
    for args in (GENERATE + ["--out", str(tmp_path / "raw")],
                 PREPROCESS + ["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data")]):
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    regenerated = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "data")
                         for d, _, files in os.walk(tmp_path / "data") for f in files)
    assert shipped_files() == regenerated
    _, mismatch, errors = filecmp.cmpfiles(DATA, tmp_path / "data", regenerated, shallow=False)
    assert mismatch == [] and errors == []
    assert {f.split(os.sep)[0] for f in regenerated} == {"train", "test_hot", "test_cold"}
