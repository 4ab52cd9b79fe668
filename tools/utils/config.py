"""The YAML config of a model folder: loading, `base:` inheritance, `-o key=value` overrides, and the one
declared set of keys (KEYS) every tool validates against.

A config has the sections `runner` and `hyper_parameters` (PaddleRec's) and
may name a `base:` config whose keys it inherits and overrides (the baseline
folders inherit the top-level config.yaml). Every key is declared in KEYS with
its type, range and default; an unknown key, a wrong type or a value out of
range is a ConfigError naming the file, the key and the fix, before anything
runs. A tool then calls validate(config, tool, model) for the keys it and the
model need.

Path rule: relative paths written in a YAML (data folders, reader modules,
model_save_path, ...) are relative to that YAML's folder, so a model folder
works from any working directory; paths given with `-o` are relative to the
working directory, like any command-line argument.

The tools add facts about the data: config["data_schema"] (the data's
schema.json, which the model's tables follow) and config["train_campaigns"]
(the training aids, for models with per-campaign blocks); at test time both
come from the checkpoint.
"""
import difflib
import os
import re

import yaml

from .dataset import max_idxs_list
from .errors import ConfigError, quoted

SECTIONS = ("runner", "hyper_parameters")
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


def _yaml_problem(e):
    """A YAMLError as one line: what is wrong and where (PyYAML's own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return where + " ".join(str(part) for part in (e.context, e.problem) if part)
    return " ".join(str(e).split())


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+.0123456789"))


# ---------------------------------------------------------------- the declared keys
def _integer(low):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        return None if ok else f"an integer >= {low}"
    return check


def _positive_number(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v == v and v != float("inf")
    return None if ok else "a number > 0"


def _boolean(v):
    return None if isinstance(v, bool) else "True or False"


def _text(v):
    return None if isinstance(v, str) and v else "a path or name"


def _choice(*values):
    def check(v):
        return None if v in values and not isinstance(v, bool) else "one of " + " | ".join(map(str, values))
    return check


def _widths(v):
    ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    return None if ok else "a non-empty list of integers >= 1, e.g. [64, 64]"


def _max_idxs(v):
    ok = v == "schema" or (isinstance(v, list) and len(v) == 3 and all(
        isinstance(g, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in g) for g in v))
    return None if ok else "'schema' (read the data's schema.json) or 3 lists [static, dynamic, ad] of ids >= 0"


# key: (check, default or REQUIRED, what it is)
REQUIRED = object()
KEYS = {
    "runner.train_data_dir": (_text, REQUIRED, "the training data folder (stage 1 is read)"),
    "runner.train_reader_path": (_text, REQUIRED, "the meta-batch reader module (reader_train)"),
    "runner.test_data_dir": (_text, REQUIRED, "a test data folder (--split swaps its last name)"),
    "runner.infer_reader_path": (_text, REQUIRED, "the test reader module (reader_test)"),
    "runner.model_save_path": (_text, REQUIRED, "where the trainer writes checkpoints"),
    "runner.infer_load_path": (_text, REQUIRED, "where meta-inference reads checkpoints"),
    "runner.infer_output_path": (_text, None, "where results go (default <infer_load_path>/results)"),
    "runner.use_gpu": (_boolean, False, "run on a GPU when Paddle has CUDA"),
    "runner.seed": (_integer(0), REQUIRED, "the seed of everything"),
    "runner.thread_num": (_integer(1), 2, "CPU threads of Paddle"),
    "runner.train_batch_size": (_integer(1), REQUIRED, "rows of each support and each query batch"),
    "runner.infer_batch_size": (_integer(1), REQUIRED, "rows of each fine-tuning batch"),
    "runner.epochs": (_integer(1), REQUIRED, "meta-training epochs"),
    "runner.print_interval": (_integer(1), 10, "meta-steps between progress updates and no-learning checks"),
    "runner.save_steps": (_integer(0), 0, "meta-steps between step checkpoints (0: at the end of epochs only)"),
    "runner.infer_start_epoch": (_integer(0), 0, "first checkpoint epoch meta-inference tests"),
    "runner.infer_end_epoch": (_integer(1), REQUIRED, "meta-inference tests epochs [start, end)"),
    "runner.infer_train_epoch": (_integer(0), REQUIRED, "fine-tuning passes over a test campaign's seeds"),
    "hyper_parameters.max_idxs": (_max_idxs, "schema", "vocabulary maxima, or schema"),
    "hyper_parameters.embed_dim": (_integer(1), REQUIRED, "embedding width"),
    "hyper_parameters.embedding_init": (_choice("normal", "xavier_uniform"), "normal",
                                        "start of the tables: N(0, 1) as the official code, or xavier_uniform"),
    "hyper_parameters.mlp_dims": (_widths, REQUIRED, "widths of the expert MLP layers"),
    "hyper_parameters.num_expert": (_integer(1), REQUIRED, "experts"),
    "hyper_parameters.num_output": (_integer(1), REQUIRED, "critics"),
    "hyper_parameters.task_count": (_integer(1), REQUIRED, "campaigns per meta-batch"),
    "hyper_parameters.sample_method": (_choice("normal", "sqrt", "unit"), "normal",
                                       "campaign draw: in proportion to rows, to their square root, or uniform"),
    "hyper_parameters.meta_order": (_choice(1, 2), 2, "2: exact second-order MAML; 1: first order"),
    "hyper_parameters.local_lr": (_positive_number, REQUIRED, "the inner SGD step"),
    "hyper_parameters.local_test_learning_rate": (_positive_number, REQUIRED, "Adam of fine-tuning"),
    "hyper_parameters.optimizer.class": (_choice("adam"), "adam", "the outer and fine-tuning optimiser"),
    "hyper_parameters.optimizer.learning_rate": (_positive_number, REQUIRED, "the outer Adam step"),
}
# Each section and sub-section is a mapping of the keys declared under it.
_SECTION_KEYS = {section for key in KEYS for section in
                 (".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 1))}
PATH_KEYS = ("train_data_dir", "test_data_dir", "model_save_path", "infer_load_path", "infer_output_path",
             "train_reader_path", "infer_reader_path")
TOOL_KEYS = {
    "train": ("train_data_dir", "train_reader_path", "model_save_path", "use_gpu", "seed", "thread_num",
              "train_batch_size", "epochs", "print_interval", "save_steps"),
    "infer": ("test_data_dir", "infer_reader_path", "infer_load_path", "infer_output_path", "use_gpu", "seed",
              "thread_num", "infer_batch_size", "infer_start_epoch", "infer_end_epoch", "infer_train_epoch"),
    "expand": ("infer_reader_path", "infer_load_path", "use_gpu", "seed", "thread_num", "infer_batch_size",
               "infer_start_epoch", "infer_end_epoch", "infer_train_epoch"),
}


# ---------------------------------------------------------------- loading
def parse_value(text):
    """A command-line value typed as YAML: 3 -> int, 1e-3 -> float, False -> bool, [1, 2] -> list."""
    try:
        return yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError) as e:
        problem = _yaml_problem(e) if isinstance(e, yaml.YAMLError) else "nested too deeply"
        raise ConfigError(f"-o value {quoted(text)} is not valid YAML ({problem}); quote strings with special "
                          "characters") from None


def load_config(path, overrides=()):
    """Read a YAML config (and its bases), apply `key=value` overrides (dotted keys), check every value.

    Adds config_abs_dir (the config's folder, PaddleRec's name) and config_path.
    """
    config = _read(os.path.abspath(path), ())
    for item in overrides:
        apply_override(config, item, path)
    config["config_abs_dir"] = os.path.dirname(os.path.abspath(path))
    config["config_path"] = os.path.abspath(path)
    for key, (check, _, what) in KEYS.items():
        value = get(config, key)
        if value is not None:
            need = check(value)
            if need:
                raise ConfigError(f"{config['config_path']}: {key} must be {need}, got {quoted(value)} ({what}); "
                                  f"fix the YAML or pass -o {key}=...")
    return config


def _read(path, seen):
    """One YAML file with its base merged under it; paths resolved against the file that wrote them."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file; pass the YAML of a model folder with -m"
                          + (f" (the base of {seen[-1]})" if seen else ""))
    if path in seen:
        raise ConfigError(f"{path}: a base cycle ({' -> '.join(seen + (path,))}); remove one base:")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the config as UTF-8"
                          ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply); a config is two levels of sections") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: needs the sections runner: and hyper_parameters: (mappings of keys to values)")
    unknown = sorted(set(data) - set(SECTIONS) - {"base"}, key=str)
    if unknown:
        hint = _hint(unknown[0], SECTIONS + ("base",))
        raise ConfigError(f"{path}: unknown top-level key {quoted(unknown[0])}{hint}; a config has the sections "
                          "runner and hyper_parameters (and optionally base)")
    folder = os.path.dirname(path)
    for section in SECTIONS:
        data.setdefault(section, {})
        _check_keys(data[section], section, path)
    _resolve_paths(data["runner"], folder)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another config, got {quoted(base)}")
    merged = _read(os.path.normpath(os.path.join(folder, base)), seen + (path,))
    return _merge(merged, data)


def _check_keys(node, prefix, path):
    """Every key under `prefix` is declared; every section is a mapping."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: {prefix} must be a section (a mapping of keys to values), got {quoted(node)}")
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        if dotted in _SECTION_KEYS:
            _check_keys(value, dotted, path)
        elif dotted not in KEYS:
            raise ConfigError(f"{path}: unknown key {quoted(dotted)}{_hint(dotted, KEYS)}; "
                              "the keys a config may hold are listed in tools/utils/config.py (KEYS)")


def _hint(key, known):
    close = difflib.get_close_matches(str(key)[:100], [str(k) for k in known], n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _resolve_paths(runner, base):
    for key in PATH_KEYS:
        if isinstance(runner.get(key), str):
            runner[key] = os.path.normpath(os.path.join(base, os.path.expanduser(runner[key])))


def _merge(base, over):
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def get(config, key, default=None):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def apply_override(config, item, path="config"):
    """Set one declared `section.key=value` in place."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"-o {quoted(item)}: expected key=value, e.g. -o runner.epochs=2")
    if key not in KEYS:
        what = "a section, not a value" if key in _SECTION_KEYS else "no such key"
        raise ConfigError(f"-o {key[:100]}: {what}{_hint(key, KEYS)}; the keys are listed in tools/utils/config.py")
    *sections, last = key.split(".")
    node = config
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = parse_value(text)
    if sections == ["runner"] and last in PATH_KEYS and isinstance(node[last], str):
        node[last] = os.path.abspath(os.path.expanduser(node[last]))


# ---------------------------------------------------------------- what a tool needs
def validate(config, tool, model):
    """Check that everything `tool` ("train" or "infer") and `model` (its HYPER_PARAMETERS) read is there.

    Fills in declared defaults; the values themselves were checked on load.
    """
    needed = [f"runner.{k}" for k in TOOL_KEYS[tool]] + \
        [f"hyper_parameters.{k}" for k in getattr(model, "HYPER_PARAMETERS", ())]
    for key in needed:
        if get(config, key) is None:
            _, default, what = KEYS[key]
            if default is REQUIRED:
                raise ConfigError(f"{config['config_path']}: {key} is missing ({what}); this model and tool need "
                                  f"it: add it to the YAML or pass -o {key}=...")
            if default is not None:
                *sections, last = key.split(".")
                node = config
                for part in sections:
                    node = node.setdefault(part, {})
                node[last] = default
    runner = config["runner"]
    if tool != "train" and runner["infer_end_epoch"] <= runner["infer_start_epoch"]:
        raise ConfigError(f"{config['config_path']}: runner.infer_end_epoch ({runner['infer_end_epoch']}) must be "
                          f"above infer_start_epoch ({runner['infer_start_epoch']}); the range is [start, end)")
    return config


def attach_schema(config, schema, source):
    """Take the data's field layout and vocabulary from `schema` (a schema.json dict read from `source`).

    hyper_parameters.max_idxs 'schema' (or absent) becomes the schema's maxima; explicit lists must equal them,
    since the embedding tables have one row per id of the data.
    """
    want = max_idxs_list(schema)
    got = config["hyper_parameters"].get("max_idxs", "schema")
    if got != "schema" and got != want:
        raise ConfigError(f"{config['config_path']}: hyper_parameters.max_idxs is {quoted(got)} but {source} has "
                          f"{want}; the embedding tables need one row per id of the data: set max_idxs: schema")
    config["hyper_parameters"]["max_idxs"] = want
    config["data_schema"] = schema
    return config
