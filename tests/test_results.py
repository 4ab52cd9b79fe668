"""tools/infer_meta.py keeps every run's results in a folder of its own and the latest run's at the top."""
import hashlib
import json
import os

from helpers import fake_model_folder, run


def test_runs_with_other_overrides_keep_their_own_results(tmp_path):
    folder = fake_model_folder(tmp_path / "model")
    assert run("trainer.py", folder).returncode == 0
    results = folder / "out" / "results"
    printed = []
    for passes in (2, 0, 2):
        done = run("infer_meta.py", folder, "--split", "both", "-o", f"runner.infer_train_epoch={passes}")
        assert done.returncode == 0, done.stderr
        printed.append(next(line for line in done.stdout.splitlines() if line.startswith("results: ")))
    runs = sorted(name for name in os.listdir(results) if os.path.isdir(results / name))
    assert len(runs) == 3
    name = "metrics_test_hot+test_cold"
    for run_name, line in zip(runs, printed):  # in time order, as the runs were made
        assert line == f"results: {results / run_name} ({name}.json, {name}.csv; copied to {results} as the latest " \
                       "run's)"
        config = json.loads((results / run_name / "config.json").read_text())
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        assert run_name.split("-")[2] == digest and config["splits"] == "test_hot+test_cold"
    passes = [json.loads((results / r / "config.json").read_text())["runner"]["infer_train_epoch"] for r in runs]
    assert passes == [2, 0, 2]
    assert runs[0].split("-")[2] == runs[2].split("-")[2] != runs[1].split("-")[2]  # the same config, the same digest
    metrics = [json.loads((results / r / f"{name}.json").read_text()) for r in runs]
    assert metrics[0] == metrics[2] != metrics[1]  # fine-tuning changes the scores; the rerun repeats them
    for ext in ("json", "csv"):  # the latest run's at the top, where tools/benchmark.py reads them
        assert (results / f"{name}.{ext}").read_bytes() == (results / runs[2] / f"{name}.{ext}").read_bytes()
