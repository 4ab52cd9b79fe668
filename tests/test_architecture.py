"""docs/architecture.md against the code: each room imports what the page says it may, and every file, name
and config key the page cites exists."""
import ast
import glob
import importlib
import os
import re

import pytest

from helpers import ROOT, schema


def project_imports(path):
    """The project modules (tools.*, net, dygraph_model, models.*, reader_*) a file imports, as dotted names:
    a module, or a name taken from it (module.name); relative imports resolved."""
    package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".").split(".")
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n.split(".")[0] in {"tools", "net", "dygraph_model", "models", "reader_train",
                                                      "reader_test"}}


def files(*patterns):
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join(ROOT, pattern), recursive=True))


ROOMS = {  # the room's files: the project modules they may import (a name, or a module and what is under it)
    "the readers": (files("reader_*.py"), ("tools.utils.data.dataset", "tools.utils.errors")),
    "the model": (files("net.py", "dygraph_model.py", "models/**/*.py", "tests/fake_model/*.py"),
                  ("net", "dygraph_model", "models")),
    "the data package": (files("tools/utils/data/*.py"),
                         ("tools.utils.data", "tools.utils.errors", "tools.utils.files", "tools.utils.progress")),
}


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_imports_only_what_it_may(room):
    paths, allowed = ROOMS[room]
    assert paths
    for path in paths:
        outside = sorted(n for n in project_imports(path) if not any(n == a or n.startswith(a + ".") for a in allowed))
        assert not outside, (os.path.relpath(path, ROOT), outside)


def test_the_check_sees_an_import_outside_the_room(tmp_path):
    reader = tmp_path / "reader_x.py"
    reader.write_text("from tools.utils.data.dataset import take\nfrom tools.utils.run.validation import x\n"
                      "import numpy\n")
    assert project_imports(str(reader)) == {"tools.utils.data.dataset.take", "tools.utils.run.validation.x"}
    assert project_imports(os.path.join(ROOT, "tools", "utils", "data", "dataset.py")) >= {
        "tools.utils.errors.DataError", "tools.utils.data.schema.AD_FIELDS"}


# ---------------------------------------------------------------- every name docs/architecture.md cites
DOC = os.path.join(ROOT, "docs", "architecture.md")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def cited():
    """The page's backticked spans, whitespace of wrapped lines made one space."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", open(DOC).read())]


def module_of(path):
    """The module of a project file, imported by its ordinary name (tools/trainer.py is tools.trainer)."""
    return importlib.import_module(path[:-3].replace("/", "."))


def members(obj):
    """obj's names: attributes, and the annotated ones of a class (a Protocol's fields)."""
    return set(dir(obj)) | set(getattr(obj, "__annotations__", {}))


def resolve(obj, dotted):
    for part in dotted.split("."):
        assert part in members(obj), f"{getattr(obj, '__name__', obj)} has no {part}"
        obj = getattr(obj, part, None)
    return obj


def test_every_file_name_and_key_the_page_cites_exists():
    """A file and a name are imported and looked up; a path is found; runner.* and hyper_parameters.* are declared
    keys, and data_schema / train_campaigns what with_data adds; a bare name (`Group.tasks`, `infer_forward`) is
    found in a module the page cites or in a class of one. Names of the files the tools write are left alone."""
    from tools.utils.run import config as cfg
    import dygraph_model
    spans = cited()
    modules = {}
    for span in spans:
        found = re.match(r"^([\w/]+\.py): (\S+)$", span)
        if found:
            modules.setdefault(found.group(1), module_of(found.group(1)))
            resolve(modules[found.group(1)], found.group(2))
    assert len(modules) >= 20, sorted(modules)
    scopes = list(modules.values()) + [v for m in modules.values() for v in vars(m).values() if isinstance(v, type)]
    keys = set(cfg.KEYS) | {f"hyper_parameters.{k}" for k in dygraph_model.HYPER_PARAMETERS}
    keys |= set(cfg.with_data({"hyper_parameters": {}}, "x", schema(), [1])) - {"hyper_parameters"}  # what it adds
    bare = []
    for span in spans:
        if re.match(r"^[\w/]+\.py: ", span) or re.match(r"^[\w.]+\.(json|npz|csv)$", span):
            continue  # a file a tool writes (meta.json, params.npz, ...), not code
        if re.match(r"^[\w./]+/[\w./]*$|^[\w/]+\.(py|md|yaml)$", span) and "<" not in span:
            assert os.path.exists(os.path.join(ROOT, span)), span
        elif span.startswith(("runner.", "hyper_parameters.")):
            assert span in keys, span
        elif IDENTIFIER.match(span):
            bare.append(span)
            assert any(_has(scope, span) for scope in scopes) or span in keys or f"runner.{span}" in keys \
                or f"hyper_parameters.{span}" in keys, span
    assert {"Group.tasks", "infer_forward", "OptionalHooks"} <= set(bare)


def _has(scope, dotted):
    try:
        resolve(scope, dotted)
        return True
    except AssertionError:
        return False
