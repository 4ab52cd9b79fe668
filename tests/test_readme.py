"""The readme's commands, run in the order written in a fresh copy of the project.

Every `python ...` line of the readme's code blocks is either run or named in SKIPPED with the reason it cannot
run here, so a command added to the readme is run by default. Two changes to the commands as written, both
declared below: the tools get a smaller network (SMALL, appended to every command that trains or adapts one;
every command gets the same, so what one run leaves for the next is as in the readme), and /tmp/raw_sample
becomes a folder of the test's own. The sample's regeneration command must give the shipped data/ byte for byte.
"""
import filecmp
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["-o", "runner.thread_num=1", "hyper_parameters.embed_dim=8", "hyper_parameters.mlp_dims=[16]",
         "hyper_parameters.num_expert=2", "hyper_parameters.num_output=2"]
TRAINS_OR_ADAPTS = ("tools/trainer.py", "tools/infer_meta.py", "tools/expand.py")
SKIPPED = {  # a command's start -> why it is not run here
    "python3 tools/quickstart.py": "sets up .venv and runs the demo or this suite: .ci/run runs `test`",
    "python tools/preprocess.py --raw RAW_DIR": "needs the competition's files",
    "python tools/trainer.py -m config_big.yaml": "needs data/big, the competition's files preprocessed",
    "python tools/import_pickle.py --pkl-dir PKL_DIR": "needs the published pickles",
    "python tools/import_pickle.py --pkl ../shared/": "reads a file outside the project",
    "python tools/make_synthetic.py --out data/raw_small": "1 M users: minutes; the sample preset below is run",
    "python tools/preprocess.py --raw data/raw_small": "needs the command before it",
    "python tools/expand.py -m config.yaml --campaign DIR": "the general form; the example after it is run",
    "python -m paddle.distributed.launch": "config_big.yaml's data; tests/test_distributed.py runs the launcher",
    "python tools/benchmark.py [": "the general form; tests/test_benchmark.py runs the benchmark",
}


def readme_commands():
    """The readme's `python` command lines in order, continuation lines joined."""
    lines, commands = open(os.path.join(ROOT, "readme.md"), encoding="utf-8").read().splitlines(), []
    joined = ""
    for line in lines:
        if joined or re.match(r"^    python3? ", line):
            joined += line.strip()
            if joined.endswith("\\"):
                joined = joined[:-1] + " "
            else:
                commands.append(joined)
                joined = ""
    return commands


def skip_reason(command):
    reasons = [why for start, why in SKIPPED.items() if command.startswith(start)]
    assert len(reasons) <= 1, command
    return reasons[0] if reasons else None


def copy_project(target):
    """The tracked files of the project, as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(target, os.path.dirname(name)), exist_ok=True)
            with open(os.path.join(ROOT, name), "rb") as src, open(os.path.join(target, name), "wb") as dst:
                dst.write(src.read())


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert any(c.startswith("python tools/trainer.py -m config.yaml") for c in commands)
    used = {start for start in SKIPPED for c in commands if c.startswith(start)}
    assert used == set(SKIPPED), f"SKIPPED names commands the readme no longer has: {set(SKIPPED) - used}"


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="not a git checkout")
def test_readme_commands_run_in_order(tmp_path):
    project, raw = tmp_path / "project", tmp_path / "raw_sample"
    copy_project(project)
    ran = []
    for command in readme_commands():
        if skip_reason(command):
            continue
        words = shlex.split(command.replace("/tmp/raw_sample", str(raw)), comments=True)
        words[0] = sys.executable
        if any(tool in words for tool in TRAINS_OR_ADAPTS):
            words += SMALL
        proc = subprocess.run(words, cwd=project, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) >= 9, ran
    # what the commands promise: checkpoints, results, an expansion, an export scored by the shipped encoder
    assert (project / "output_model_metaheac" / "0" / "checkpoint.done").is_file()
    assert (project / "output_model_order1" / "1" / "checkpoint.done").is_file()
    assert {"top_k.csv", "expand.json", "expand.png", "model"} <= set(os.listdir(project / "output_expand"))
    with open(project / "output_scored" / "scores.csv") as scores:
        assert sum(1 for _ in scores) > 1000
    # the sample regenerated as the readme says is the shipped data, byte for byte
    shipped = sorted(os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "data"))
                     for d, _, files in os.walk(os.path.join(ROOT, "data")) for f in files)
    regenerated = sorted(os.path.relpath(os.path.join(d, f), project / "data")
                         for d, _, files in os.walk(project / "data") for f in files)
    assert shipped == regenerated
    _, mismatch, errors = filecmp.cmpfiles(os.path.join(ROOT, "data"), project / "data", shipped, shallow=False)
    assert mismatch == [] and errors == []
