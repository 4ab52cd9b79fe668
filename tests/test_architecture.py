"""docs/architecture.md against the code: each room imports what the page says it may."""
import ast
import glob
import os

import pytest

from helpers import ROOT


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
