"""The YAML of a config, read strictly: PyYAML's SafeLoader with three differences a config needs (_Loader), and
its errors as one line. tools/utils/run/config.py turns them into ConfigErrors that name the file or the -o value.
"""
import re

import yaml

from ..errors import quoted

MAX_VALUES = 10_000  # values a YAML document may expand to, aliases counted as often as they are used


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2 does; PyYAML's YAML 1.1 gives a string), refuses a key
    repeated in one mapping (PyYAML keeps the last in silence) and a document whose aliases expand it past
    MAX_VALUES values (an "alias bomb": a few lines that stand for billions of values)."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in first
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {quoted(key)} appears twice in one mapping (first at line {first[key]}); "
                    "the second would silently replace the first: keep one", key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _expanded_size(root):
    """The values a composed YAML node stands for once every alias is expanded (each node counted once per
    use); a YAMLError past MAX_VALUES or for a node that contains itself. Linear in the distinct nodes."""
    sizes, open_nodes, stack = {}, set(), [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases (*name) expand it to more than {MAX_VALUES:,} values; a config holds a "
                    "few dozen: write the values out", node.start_mark)
            continue
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(None, None, "an alias (*name) inside the value it names; "
                                                    "a config value cannot contain itself", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _problem(e):
    """A YAMLError as one line: what is wrong and where (PyYAML's own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return where + " ".join(str(part) for part in (e.context, e.problem) if part)
    return " ".join(str(e).split())


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+.0123456789"))


class Invalid(ValueError):
    """Text that is not YAML a config can hold; str() is what is wrong and where, on one line."""


def parse(text):
    """The value a YAML text stands for; Invalid when it is not valid YAML. A RecursionError (a document nested
    thousands of levels deep) passes through: the caller says what nesting its place allows."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise Invalid(_problem(e)) from None
