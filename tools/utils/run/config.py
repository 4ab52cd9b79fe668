"""The YAML config of a model folder: loading, `base:` inheritance, `-o key=value` overrides, and checking every
value against its declaration.

A config has the sections `runner` and `hyper_parameters` (PaddleRec's) and
may name a `base:` config whose keys it inherits and overrides (the baseline
folders inherit the top-level config.yaml). The two sections have two owners:
- the runner keys belong to the tools and are declared here (KEYS);
- the hyper_parameters belong to the model folder: its dygraph_model.py
  declares the ones it reads (DygraphModel.HYPER_PARAMETERS), so a new model
  folder brings new keys without a change here.
Both declare a key as (kind, default or REQUIRED, meaning); kind_check says
which kinds there are. An unknown key, a wrong type or a value out of range is
a ConfigError naming where the value was set (the file, or -o), the key and
the fix, before anything runs: runner values on load, hyper_parameters when a
tool calls validate(config, tool, model).

Path rule: relative paths written in a YAML (data folders, reader modules,
model_save_path, ...) are relative to that YAML's folder, so a model folder
works from any working directory; paths given with `-o` are relative to the
working directory, like any command-line argument.

validate returns the run spec: a new, read-only config (Frozen: a change is a
TypeError), the loaded one left as it was. What is learnt from the data is
not written into it: with_data makes the config the model's hooks and the
readers read, the spec plus config["data_schema"] (the data's schema.json,
which the model's tables follow, and hyper_parameters.max_idxs from it) and
config["train_campaigns"] (the training aids, for models with per-campaign
blocks), again a new read-only one. The trainer learns both from the training
data; at test time both come from the checkpoint (tools/utils/run/trained.py).
"""
import difflib
import math
import os
import re

from . import config_yaml
from ..data.dataset import max_idxs_list
from ..errors import ConfigError, quoted

SECTIONS = ("runner", "hyper_parameters")


# ---------------------------------------------------------------- kinds of values
def _integer(low):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        return None if ok else f"an integer >= {low}"
    return check


def _number(op, bound):
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (v > bound if op == ">" else v >= bound)
        return None if ok else f"a number {op} {bound:g}"
    return check


def _boolean(v):
    return None if isinstance(v, bool) else "True or False"


def _text(v):
    fits = isinstance(v, str) and v and len(v) <= 4096 and max(map(len, v.split(os.sep))) <= 255
    return None if fits else "a path or name (at most 4,096 characters, 255 between slashes)"


def _choice(values):
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


_NAMED_KINDS = {"bool": _boolean, "text": _text, "int list >= 1": _widths, "max_idxs": _max_idxs}


def kind_check(kind):
    """The check of a declared kind: "int >= N", "number > X", "number >= X", "bool", "text" (a path or name),
    "int list >= 1", "max_idxs" or "one of A | B | ..." (each value typed as YAML). The check returns None for a
    good value, else what the value must be."""
    if kind in _NAMED_KINDS:
        return _NAMED_KINDS[kind]
    integer = re.fullmatch(r"int >= (-?\d+)", kind)
    if integer:
        return _integer(int(integer.group(1)))
    number = re.fullmatch(r"number (>=?) (\S+)", kind)
    if number:
        return _number(number.group(1), float(number.group(2)))
    if kind.startswith("one of "):
        return _choice([config_yaml.parse(v) for v in kind[len("one of "):].split(" | ")])
    raise ValueError(f"unknown kind {kind!r}: use " + ", ".join(
        ["int >= N", "number > X", "number >= X", "one of A | B"] + list(_NAMED_KINDS)))


# ---------------------------------------------------------------- the runner's keys (the tools' own)
# key: (kind, default or REQUIRED, what it is). The hyper_parameters belong to the model folder: its
# dygraph_model.py declares them in the same form (DygraphModel.HYPER_PARAMETERS), see validate.
REQUIRED = "required"
KEYS = {
    "runner.train_data_dir": ("text", REQUIRED, "the training data folder (stage 1 is read)"),
    "runner.train_reader_path": ("text", REQUIRED, "the meta-batch reader module (reader_train)"),
    "runner.test_data_dir": ("text", REQUIRED, "a test data folder (--split swaps its last name)"),
    "runner.infer_reader_path": ("text", REQUIRED, "the test reader module (reader_test)"),
    "runner.model_save_path": ("text", REQUIRED, "where the trainer writes checkpoints"),
    "runner.infer_load_path": ("text", REQUIRED, "where meta-inference reads checkpoints"),
    "runner.infer_output_path": ("text", None, "where results go (default <infer_load_path>/results)"),
    "runner.use_gpu": ("bool", False, "run on a GPU when Paddle has CUDA"),
    "runner.seed": ("int >= 0", REQUIRED, "the seed of everything"),
    "runner.thread_num": ("int >= 1", 2, "CPU threads of Paddle, and of the fits of a campaign's wide part"),
    "runner.train_batch_size": ("int >= 1", REQUIRED, "rows of each support and each query batch"),
    "runner.infer_batch_size": ("int >= 1", REQUIRED, "rows of each fine-tuning batch"),
    "runner.epochs": ("int >= 1", REQUIRED, "meta-training epochs"),
    "runner.print_interval": ("int >= 1", 10, "meta-steps between progress updates and no-learning checks"),
    "runner.save_steps": ("int >= 0", 0, "meta-steps between step checkpoints (0: at the end of epochs only)"),
    "runner.valid_campaigns": ("number >= 0", 0, "training campaigns held out as validation campaigns: a count, "
                               "or a fraction below 1 (0: none, the paper's protocol)"),
    "runner.valid_interval": ("int >= 0", 0, "meta-steps between validations (0: at the end of each epoch)"),
    "runner.valid_patience": ("int >= 0", 0, "validations without a better GAUC before training stops (0: never)"),
    "runner.use_visual": ("bool", False, "write the training curves for VisualDL and a PNG of them"),
    "runner.visual_log_path": ("text", None, "where the curves go (default <model_save_path>/visualdl)"),
    "runner.infer_start_epoch": ("int >= 0", 0, "first checkpoint epoch meta-inference tests"),
    "runner.infer_end_epoch": ("int >= 1", REQUIRED, "meta-inference tests epochs [start, end)"),
    "runner.infer_train_epoch": ("int >= 0", REQUIRED, "fine-tuning passes over a test campaign's seeds"),
    "runner.infer_seeds": ("one of labelled | positive", "labelled",
                           "a test campaign's seeds: its labelled stage-1 rows, or its positives with background "
                           "negatives (expand.py's protocol; none: no fine-tuning)"),
}
PATH_KEYS = ("train_data_dir", "test_data_dir", "model_save_path", "infer_load_path", "infer_output_path",
             "train_reader_path", "infer_reader_path", "visual_log_path")
TOOL_KEYS = {
    "train": ("train_data_dir", "train_reader_path", "model_save_path", "use_gpu", "seed", "thread_num",
              "train_batch_size", "epochs", "print_interval", "save_steps", "use_visual", "visual_log_path",
              "valid_campaigns", "valid_interval", "valid_patience"),
    "validate": ("infer_reader_path", "infer_batch_size", "infer_train_epoch", "infer_seeds"),  # valid_campaigns
    "infer": ("test_data_dir", "infer_reader_path", "infer_load_path", "infer_output_path", "use_gpu", "seed",
              "thread_num", "infer_batch_size", "infer_start_epoch", "infer_end_epoch", "infer_train_epoch",
              "infer_seeds"),
    "expand": ("infer_reader_path", "infer_load_path", "use_gpu", "seed", "thread_num", "infer_batch_size",
               "infer_start_epoch", "infer_end_epoch", "infer_train_epoch"),
}
SOURCES = "value_sources"  # config[SOURCES]: dotted key -> the file (or "-o") that set its value


# ---------------------------------------------------------------- loading
def parse_value(text):
    """A command-line value typed as YAML: 3 -> int, 1e-3 -> float, False -> bool, [1, 2] -> list."""
    try:
        return config_yaml.parse(text)
    except (config_yaml.Invalid, RecursionError) as e:
        problem = str(e) if isinstance(e, config_yaml.Invalid) else "nested too deeply"
        raise ConfigError(f"-o value {quoted(text)} is not valid YAML ({problem}); quote strings with special "
                          "characters") from None


def load_config(path, overrides=()):
    """Read a YAML config (and its bases), apply `key=value` overrides (dotted keys), check the runner's values.

    Adds config_abs_dir (the config's folder, PaddleRec's name), config_path, model_dir (model_dir_of) and SOURCES
    (where each value was set). The hyper_parameters are checked by validate, against the model folder's
    declaration.
    """
    sources, chain = {}, []
    config = _read(os.path.abspath(path), chain, sources)
    config[SOURCES] = sources
    for item in overrides:
        apply_override(config, item)
    config["config_abs_dir"] = os.path.dirname(os.path.abspath(path))
    config["config_path"] = os.path.abspath(path)
    config["model_dir"] = model_dir_of(chain)
    for key, (kind, _, what) in KEYS.items():
        _check_value(config, key, kind, what)
    return config


def _read(path, chain, sources):
    """One YAML file with its base merged under it; paths resolved against the file that wrote them.

    chain receives the files read (this one, then its base, ...); sources, for every value, the file that set it
    (this file's values override its base's).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file; pass the YAML of a model folder with -m"
                          + (f" (the base of {chain[-1]})" if chain else ""))
    if path in chain:
        raise ConfigError(f"{path}: a base cycle ({' -> '.join(chain + [path])}); remove one base:")
    chain.append(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the config as UTF-8"
                          ) from None
    try:
        data = config_yaml.parse(text)
    except config_yaml.Invalid as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
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
        _check_sections(data[section], section, path)
    _resolve_paths(data["runner"], folder)
    base = data.pop("base", None)
    own = {section: data[section] for section in SECTIONS}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be the path of another config, got {quoted(base)}")
        data = _merge(_read(os.path.normpath(os.path.join(folder, base)), chain, sources), data)
    sources.update(dict.fromkeys(leaves(own), path))
    return data


def model_dir_of(chain):
    """The model folder of a config: its own folder, or else the folder of the nearest base config that has a
    dygraph_model.py beside it, so a config kept elsewhere names its model by `base: <model folder>/config.yaml`
    (None if there is none). chain: the config's file, then its base, its base's base, ..."""
    for path in chain:
        if os.path.isfile(os.path.join(os.path.dirname(path), "dygraph_model.py")):
            return os.path.dirname(path)
    return None


def _check_sections(node, prefix, path):
    """Every section is a mapping; every runner key is one of KEYS (the hyper_parameters are the model's)."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: {prefix} must be a section (a mapping of keys to values), got {quoted(node)}")
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        if prefix.startswith("hyper_parameters"):
            if isinstance(value, dict):
                _check_sections(value, dotted, path)
        elif dotted not in KEYS:
            raise ConfigError(f"{path}: unknown key {quoted(dotted)}{_hint(dotted, KEYS)}; "
                              "the runner keys are listed in tools/utils/run/config.py (KEYS)")


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


def leaves(node, prefix=""):
    """The dotted keys of every value (not section) under a mapping."""
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from leaves(value, dotted)
        else:
            yield dotted


def get(config, key, default=None):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _set(config, key, value):
    *sections, last = key.split(".")
    node = config
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value


def _drop(config, key):
    *sections, last = key.split(".")
    get(config, ".".join(sections)).pop(last)


def apply_override(config, item):
    """Set one `section.key=value` in place: a runner key of KEYS, or any hyper_parameters key (the model folder
    declares those; validate checks them)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"-o {quoted(item)}: expected key=value, e.g. -o runner.epochs=2")
    section = key.partition(".")[0]
    if section == "hyper_parameters" and "." in key:
        if isinstance(get(config, key), dict):
            raise ConfigError(f"-o {key[:100]}: a section, not a value; set one of its keys, e.g. -o "
                              f"{key[:100]}.<name>=...")
    elif key not in KEYS:
        raise ConfigError(f"-o {key[:100]}: no such key{_hint(key, KEYS)}; the runner keys are listed in "
                          "tools/utils/run/config.py (KEYS), the hyper_parameters in the model folder's "
                          "dygraph_model.py")
    is_path = section == "runner" and key.rpartition(".")[2] in PATH_KEYS
    # a path is taken as written (a folder named 2021, a '#' in a name), unless quoted or null
    value = text if is_path and text and text[0] not in "'\"" and text not in ("null", "~") else parse_value(text)
    if is_path and isinstance(value, str):
        value = os.path.abspath(os.path.expanduser(value))
    _set(config, key, value)
    config[SOURCES][key] = "-o"


def _where(config, key):
    """Who set key's value, for a message: '-o key' or the config file."""
    source = config.get(SOURCES, {}).get(key, config.get("config_path", "config"))
    return f"-o {key}" if source == "-o" else f"{source}: {key}"


def _fix(config, key):
    return f"pass -o {key}=..." if config[SOURCES].get(key) == "-o" else f"fix the YAML or pass -o {key}=..."


def _check_value(config, key, kind, what):
    value = get(config, key)
    if value is not None:
        need = kind_check(kind)(value)
        if need:
            raise ConfigError(f"{_where(config, key)} must be {need}, got {quoted(value)} ({what}); "
                              f"{_fix(config, key)}")


# ---------------------------------------------------------------- what a tool needs
def hyper_parameters_of(model):
    """{"hyper_parameters.<key>": (kind, default, meaning)} as the model folder declares them."""
    return {f"hyper_parameters.{key}": spec for key, spec in model.HYPER_PARAMETERS.items()}


class Frozen(dict):
    """A mapping of a run spec (validate, with_data): read-only, so no module changes the config another reads."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a validated config is read-only (tools/utils/run/config.py: validate); what is learnt "
                        "from the data makes a new one (with_data)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return Frozen, (dict(self),)


class FrozenList(list):
    """A list of a run spec, read-only as Frozen."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = clear = extend = insert = pop = remove = reverse = \
        sort = Frozen._refuse

    def __reduce__(self):
        return FrozenList, (list(self),)


def freeze(value):
    """value (dicts and lists inside) as Frozen and FrozenList, copied."""
    if isinstance(value, dict):
        return Frozen({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    return value


def _thaw(value):
    """A plain copy of value, dicts and lists inside included."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_thaw(v) for v in value]
    return value


def validate(config, tool, model):
    """The run spec of `tool` ("train", "infer", "expand" or "validate"): config checked for what the tool and the
    model folder read, declared defaults filled in, as a new read-only config (Frozen); config is not changed.

    The runner keys are the tool's (TOOL_KEYS, declared in KEYS); the hyper_parameters are the model folder's
    (model.HYPER_PARAMETERS: key -> (kind, default, meaning), declared in its dygraph_model.py). A
    hyper-parameter the model does not declare is an error where the config itself or -o sets it (misspelt, or
    another model's), and left out where a base config sets it: a baseline inherits MetaHeac's config, not its
    experts.
    """
    config = _thaw(config)
    declared = hyper_parameters_of(model)
    runner_keys = [(f"runner.{k}", KEYS[f"runner.{k}"]) for k in TOOL_KEYS[tool]]
    _fill(config, runner_keys)
    own = (config["config_path"], "-o")
    for key in list(leaves(config["hyper_parameters"], "hyper_parameters")):
        if key in declared:
            continue
        if config[SOURCES].get(key) in own:
            raise ConfigError(_undeclared(config, key, declared, model))
        _drop(config, key)
    _fill(config, declared.items())
    runner = config["runner"]
    if tool != "train" and runner["infer_end_epoch"] <= runner["infer_start_epoch"]:
        raise ConfigError(f"{config['config_path']}: runner.infer_end_epoch ({runner['infer_end_epoch']}) must be "
                          f"above infer_start_epoch ({runner['infer_start_epoch']}); the range is [start, end)")
    return freeze(config)


def _undeclared(config, key, declared, model):
    """The message for a hyper-parameter the model does not declare, set by the config itself or by -o."""
    model_file = model.source
    names = ", ".join(k.partition(".")[2] for k in declared) or "none"
    by_option = config[SOURCES][key] == "-o"
    if any(k.startswith(key + ".") for k in declared):
        problem = f"{key[:100]} must be a section (a mapping of keys to values), got {quoted(get(config, key))}"
    else:
        problem = (f"{key[:100]}: no such key" if by_option else f"unknown key {quoted(key)}") + _hint(key, declared)
    return (f"{'-o ' if by_option else config[SOURCES][key] + ': '}{problem}; this model's hyper_parameters are "
            f"declared in {model_file} (HYPER_PARAMETERS{': ' + names if len(names) < 60 else ''})")


def _fill(config, declarations):
    """Declared defaults where a key is missing; a missing REQUIRED key is an error; every value's kind checked."""
    for key, (kind, default, what) in declarations:
        if get(config, key) is None:
            if default == REQUIRED:
                raise ConfigError(f"{config['config_path']}: {key} is missing ({what}); this model and tool need "
                                  f"it: add it to the YAML or pass -o {key}=...")
            if default is not None:
                _set(config, key, default)
        _check_value(config, key, kind, what)


def with_data(spec, source, schema=None, train_campaigns=None):
    """The config the model's hooks and the readers read: a new read-only config, the run spec with what was
    learnt from the data read from `source` (spec itself unchanged).

    schema (a schema.json dict): config["data_schema"], the data's field layout and vocabulary;
    hyper_parameters.max_idxs 'schema' (or absent) becomes the schema's maxima, and explicit lists must equal
    them, since the embedding tables have one row per id of the data. train_campaigns: config["train_campaigns"],
    the training aids.
    """
    config = _thaw(spec)
    if schema is not None:
        want = max_idxs_list(schema)
        got = config["hyper_parameters"].get("max_idxs", "schema")
        if got != "schema" and got != want:
            raise ConfigError(f"{config['config_path']}: hyper_parameters.max_idxs is {quoted(got)} but {source} "
                              f"has {want}; the embedding tables need one row per id of the data: set max_idxs: "
                              "schema")
        config["hyper_parameters"]["max_idxs"] = want
        config["data_schema"] = schema
    if train_campaigns is not None:
        config["train_campaigns"] = [int(aid) for aid in train_campaigns]
    return freeze(config)
