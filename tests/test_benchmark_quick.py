"""benchmark.py --quick says in its table and chart that it is a smoke test with small embeddings."""
import os
import re
import struct
import subprocess
import sys

from helpers import ROOT, write_split


def png_text(path):
    """The tEXt chunks of a PNG: {keyword: text}."""
    data, at, found = open(path, "rb").read(), 8, {}
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"tEXt":
            keyword, _, text = data[at + 8:at + 8 + size].partition(b"\0")
            found[keyword.decode("latin-1")] = text.decode("latin-1")
        at += 12 + size
    return found


def test_a_quick_run_is_labelled_a_smoke_test_in_its_table_and_chart(tmp_path):
    data, out = tmp_path / "data", tmp_path / "bench"
    write_split(data / "train", {1: 40, 2: 30, 3: 20, 4: 20, 5: 10}, seed=1)
    write_split(data / "test_hot", {11: 30}, {11: 60}, seed=2)
    write_split(data / "test_cold", {21: 8}, {21: 40}, seed=3)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--quick", "--methods", "lr",
                           "--seeds", "1", "--data", str(data), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    note = "SMOKE TEST (--quick): embed_dim 8, 1 seeds, 1 epoch(s); it checks that the methods run, its numbers " \
           "are not results (docs/results.md has those)"
    table = done.stdout[done.stdout.index(f"**{note}**"):]
    assert re.match(r"\*\*SMOKE TEST[^\n]*\*\*\n\n\*labelled seeds[^\n]*\n\n\| Method \|", table)  # heads it
    assert f"**{note}**\n\n*labelled seeds" in (out / "results.md").read_text()
    assert png_text(out / "gauc.png")["Description"] == note
