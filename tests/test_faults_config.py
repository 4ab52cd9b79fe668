"""Fault injection on config files (issue 20): bytes that are not UTF-8, repeated keys, alias bombs, huge values
quoted in messages, networks too large for the machine; and the config mistakes that already stopped in one line.

The tools run in this process (tools/utils/cli.run, as their command lines do); every case checks exit code 2,
one short line on stderr naming the file and the fix, and that nothing was written.
"""
import os
import time

import pytest

from helpers import ROOT
from tools.utils import cli

CONFIG = os.path.join(ROOT, "config.yaml")


def trainer(config, *options):
    from tools import trainer as tool
    return cli.run(tool.main, ["-m", str(config), *(("-o", *options) if options else ())])


def error_line(capsys, *fragments, limit=400):
    """stderr is one line `error: ...`, shorter than limit, holding every fragment."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err[:5]
    assert len(err[0]) < limit, f"{len(err[0])} characters: {err[0][:300]}..."
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def config_file(tmp_path, text, name="config.yaml"):
    """A config that inherits the top-level config.yaml and writes into tmp_path/out."""
    path = tmp_path / name
    path.write_bytes((f"base: {CONFIG}\nrunner:\n  model_save_path: {tmp_path / 'out'}\n").encode()
                     + (text.encode() if isinstance(text, str) else text))
    return path


# ---------------------------------------------------------------- 9: not UTF-8
def test_a_config_that_is_not_utf8_is_one_line_naming_the_line(tmp_path, capsys):
    """Issue 20 #9: a byte that is not UTF-8 was a UnicodeDecodeError traceback."""
    path = config_file(tmp_path, b"hyper_parameters:\n  embed_dim: 8  # caf\xe9 (Latin-1)\n")
    assert trainer(path) == 2
    error_line(capsys, f"{path} line 5: not UTF-8 text (byte 0xe9); save the config as UTF-8")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 17: repeated keys
@pytest.mark.parametrize("text, line, first, key", [
    ("  epochs: 1\n  epochs: 5\n", 5, 4, "'epochs'"),
    ("  epochs: 1\nrunner:\n  seed: 3\n", 5, 2, "'runner'"),
    ("hyper_parameters:\n  optimizer: {learning_rate: 0.1, learning_rate: 0.2}\n", 5, 5, "'learning_rate'"),
])
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys, text, line, first, key):
    """Issue 20 #17: `epochs: 1` then `epochs: 5`, or two runner: sections, were taken in silence (the last won)."""
    path = tmp_path / "config.yaml"
    path.write_text(f"base: {CONFIG}\nrunner:\n  model_save_path: {tmp_path / 'out'}\n" + text)
    assert trainer(path) == 2
    error_line(capsys, f"{path}: not valid YAML (line {line}, column ", f"key {key} appears twice in one mapping "
               f"(first at line {first})", "keep one")
    assert not (tmp_path / "out").exists()


def test_yaml_merge_keys_still_override_without_being_called_repeated(tmp_path):
    from tools.utils.run import config as cfg
    path = tmp_path / "config.yaml"
    path.write_text(f"base: {CONFIG}\nrunner:\n  <<: {{epochs: 3, seed: 5}}\n  epochs: 4\n")
    runner = cfg.load_config(str(path))["runner"]
    assert (runner["epochs"], runner["seed"]) == (4, 5)


# ---------------------------------------------------------------- 10: alias bombs and huge values
def alias_bomb(levels, width=9):
    """`[&a [x, ... x], &b [*a, ... *a], ...]`: `levels` anchors of `width` aliases each, width^levels values."""
    names = [chr(ord("a") + i) for i in range(levels)]
    parts = [f"&{names[0]} [{', '.join(['lol'] * width)}]"]
    parts += [f"&{name} [{', '.join(['*' + below] * width)}]" for below, name in zip(names, names[1:])]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys, levels):
    """Issue 20 #10: nine levels of nine aliases in runner.model_save_path: the message repr()'d the expanded
    value, 93 s and 3.4 GB, then MemoryError."""
    path = config_file(tmp_path, f"  train_data_dir: {alias_bomb(levels)}\n")
    start = time.perf_counter()
    assert trainer(path) == 2
    assert time.perf_counter() - start < 5
    error_line(capsys, f"{path}: not valid YAML (line 4, column ", "expand it to more than 10,000 values")
    path = tmp_path / "recursive.yaml"
    path.write_text(f"base: {CONFIG}\nrunner:\n  model_save_path: &x [1, *x]\n")
    assert trainer(path) == 2
    error_line(capsys, "an alias (*name) inside the value it names")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, says", [
    ("runner.model_save_path=[" + "x" * 100_000 + "]",  # a path as written: refused before the OS refuses it
     "runner.model_save_path must be a path or name (at most 4,096 characters, 255 between slashes), got '/"),
    ("runner.epochs=" + "9" * 5000 + "x", "runner.epochs must be an integer >= 1, got '99999"),
    ("runner.epochs=[" + ", ".join(["[1, 2, 3]"] * 2000) + "]", "runner.epochs must be an integer >= 1, got [["),
    ("runner.epochs=" + "[" * 5000, "-o value '[[[[["),
    ("x" * 100_000, "-o 'xxxx"),
])
def test_huge_values_are_quoted_by_a_short_prefix(tmp_path, capsys, override, says):
    """Issue 20 #10: every quoted value in a config message is cut to a short prefix."""
    assert trainer(CONFIG, f"runner.model_save_path={tmp_path / 'out'}", override) == 2
    error_line(capsys, says, limit=350)
    assert not (tmp_path / "out").exists()


def test_a_huge_unknown_key_is_quoted_by_a_short_prefix(tmp_path, capsys):
    path = config_file(tmp_path, "hyper_parameters:\n  ? " + "k" * 100_000 + "\n  : 1\n")
    assert trainer(path) == 2
    error_line(capsys, f"{path}: unknown key 'hyper_parameters.kkkk", limit=350)


# ---------------------------------------------------------------- what held: keep it held
@pytest.mark.parametrize("override, says", [
    ("hyper_parameters.local_lr=.nan", "hyper_parameters.local_lr must be a number > 0, got nan"),
    ("hyper_parameters.optimizer.learning_rate=.inf", "optimizer.learning_rate must be a number > 0, got inf"),
    ("hyper_parameters.local_test_learning_rate=-.inf", "local_test_learning_rate must be a number > 0, got -inf"),
    ("runner.seed=-1", "runner.seed must be an integer >= 0, got -1"),
    ("runner.use_gpu=yes please", "runner.use_gpu must be True or False, got 'yes please'"),
    ("hyper_parameters.meta_order=3", "hyper_parameters.meta_order must be one of 1 | 2, got 3"),
    ("runner.thread_num=true", "runner.thread_num must be an integer >= 1, got True"),
])
def test_values_that_are_not_numbers_or_out_of_range_are_one_line(tmp_path, capsys, override, says):
    assert trainer(CONFIG, f"runner.model_save_path={tmp_path / 'out'}", override) == 2
    error_line(capsys, says)
    assert not (tmp_path / "out").exists()


def test_a_base_cycle_is_one_line_naming_the_cycle(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    assert trainer(tmp_path / "a.yaml") == 2
    error_line(capsys, f"a base cycle ({tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'})")


def test_python_tags_are_refused_and_run_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = config_file(tmp_path, f"  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert trainer(path) == 2
    error_line(capsys, f"{path}: not valid YAML (line 4, column ", "could not determine a constructor for the tag "
               "'tag:yaml.org,2002:python/object/apply:os.system'")
    assert not marker.exists() and not (tmp_path / "out").exists()
