"""A fine-tuned campaign model for serving: exported for Paddle Inference, and scored with expand.py's own encoder.

`tools/expand.py --export DIR` writes
    DIR/model.json, DIR/model.pdiparams  the program and weights of the campaign's scorer
                                         (tools/utils/serving/export_net.py), loadable by Paddle Inference alone
    DIR/vocabulary.npz                   the raw-id -> id maps (tools/utils/data/vocabulary.py)
    DIR/inputs.json                      the inputs, their shapes and dtypes, and INPUT_RULES
The campaign's ad ids are built into the program (the model serves one
campaign), so a server feeds only a user's ids:
    static   [N, 7]   int64, the single-valued user fields
    dynamic  [N, 50]  int64, the 7 id lists side by side (padded with 0)
    lengths  [N, 7]   int64, the real ids of each list
and gets the click probability [N].

Scorer.score_pool (and tools/score.py over it) reads raw userFeature.data lines, or
an encoded stage file, with the code expand.py reads its pool with
(tools/utils/serving/expansion.py's pool_chunks, which encodes with
tools/utils/data/vocabulary.py), so the exported model's scores equal expand.py's.
"""
import json
import os

import numpy as np

from . import expansion
from ..data import schema
from ..data import vocabulary
from ..run.campaign import SCORE_ROWS
from ..errors import DataError
from ..files import write_json

MODEL = "model"  # DIR/model.json (the program) and DIR/model.pdiparams (the weights)
INPUTS = "inputs.json"
INPUT_RULES = {
    "ids": "an id is the position of the raw value in the field's sorted raw values (vocabulary.npz); "
           "position 0 is the raw value -1, 'missing'",
    "unseen raw id": "0, the missing id (tools/utils/data/vocabulary.py's encode)",
    "missing single-valued field": "0 in its column of static",
    "list": "its first `width` ids in the order of the line, left-aligned in the list's columns of dynamic; "
            "lengths holds how many are real (at most the width)",
    "missing or empty list": "length 0, NOT one id of 0 or -1 (a list of length 1 holding id 0 is another "
                             "user: it averages the 'missing' embedding in)",
    "padding": "columns past a list's length are never read; 0 by convention",
    "dtype": "int64 for all three inputs",
}


def export(net, ad_ids, out_dir, description, vocabulary_bytes=None):
    """Write the campaign model to out_dir; returns the paths of the program and the weights.

    description: facts about the model for inputs.json (campaign, checkpoint, vocabulary_sha256 and
    data_schema, the schema dict tools/score.py checks encoded pools against).
    """
    from ..paddle_env import paddle
    from .export_net import campaign_scorer

    os.makedirs(out_dir, exist_ok=True)
    spec = [paddle.static.InputSpec([None, width], "int64", name) for name, width in
            (("static", len(schema.STATIC_FIELDS)), ("dynamic", schema.DYNAMIC_WIDTH),
             ("lengths", len(schema.DYNAMIC_FIELDS)))]
    net.eval()
    paddle.jit.save(campaign_scorer(net, ad_ids), os.path.join(out_dir, MODEL), input_spec=spec)
    write_json(os.path.join(out_dir, INPUTS), {
        **description,
        "inputs": {
            "static": {"shape": [None, len(schema.STATIC_FIELDS)], "dtype": "int64",
                       "fields": list(schema.STATIC_FIELDS)},
            "dynamic": {"shape": [None, schema.DYNAMIC_WIDTH], "dtype": "int64", "fields": list(schema.DYNAMIC_FIELDS),
                        "widths": list(schema.DYNAMIC_WIDTHS), "padding": 0},
            "lengths": {"shape": [None, len(schema.DYNAMIC_FIELDS)], "dtype": "int64",
                        "fields": list(schema.DYNAMIC_FIELDS)},
        },
        "input_rules": INPUT_RULES,
        "encoder": "tools/score.py (tools/utils/serving/exported.py's Scorer): raw userFeature.data lines in, "
                   "scores out",
        "output": {"shape": [None], "dtype": "float32", "meaning": "click probability"},
        "ad_ids_built_in": [int(a) for a in ad_ids],
        "files": {"program": f"{MODEL}.json", "weights": f"{MODEL}.pdiparams",
                  "vocabulary": vocabulary.VOCAB_FILE if vocabulary_bytes is not None else None},
    })
    if vocabulary_bytes is not None:
        with open(os.path.join(out_dir, vocabulary.VOCAB_FILE), "wb") as f:
            f.write(vocabulary_bytes)
    return os.path.join(out_dir, f"{MODEL}.json"), os.path.join(out_dir, f"{MODEL}.pdiparams")


def read_inputs(out_dir):
    """inputs.json of an exported model folder, checked to be one."""
    for name in (INPUTS, f"{MODEL}.json", f"{MODEL}.pdiparams"):
        if not os.path.isfile(os.path.join(out_dir, name)):
            raise DataError(f"{os.path.join(out_dir, name)}: not found; give the folder written by "
                            "`tools/expand.py ... --export DIR`")
    path = os.path.join(out_dir, INPUTS)
    try:
        with open(path) as f:
            inputs = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e}); export the model again with tools/expand.py --export") from e
    if not isinstance(inputs, dict) or not isinstance(inputs.get("data_schema"), dict):
        raise DataError(f"{path}: no 'data_schema' (an export of an earlier version?); export the model again "
                        "with tools/expand.py --export")
    return inputs


def predictor(out_dir, threads=1):
    """A Paddle Inference predictor of an exported campaign model (CPU, Paddle's default passes and oneDNN)."""
    from .. import paddle_env
    paddle_env.load()  # Paddle's environment, before paddle.inference
    from paddle import inference
    config = inference.Config(os.path.join(out_dir, f"{MODEL}.json"), os.path.join(out_dir, f"{MODEL}.pdiparams"))
    config.disable_gpu()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(threads)
    return inference.create_predictor(config)


def predict(pred, static, dynamic, lengths):
    """Scores [N] of a predictor for the users' id arrays."""
    for name, values in (("static", static), ("dynamic", dynamic), ("lengths", lengths)):
        pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(values, dtype=np.int64))
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


class Scorer:
    """An exported campaign model, loaded, with the encoder expand.py reads its pool with."""

    def __init__(self, out_dir, threads=1):
        self.inputs = read_inputs(out_dir)
        self.vocab = vocabulary.load(out_dir, required=False)
        self.predictor = predictor(out_dir, threads)

    def score_pool(self, pool, unknown=None):
        """(uids, scores) of the pool's users, chunk by chunk in pool order.

        The pool (a raw userFeature.data, or a stage .npz encoded with the model's vocabulary) is read and
        encoded by tools/utils/serving/expansion.py's pool_chunks, as expand.py reads it; unknown (a
        vocabulary.UnknownIds) counts the raw ids not in the vocabulary.
        """
        unknown = vocabulary.UnknownIds() if unknown is None else unknown
        for chunk in expansion.pool_chunks(pool, self.inputs["data_schema"], self.vocab, unknown):
            parts = [predict(self.predictor, *(chunk[k][start:start + SCORE_ROWS]
                                               for k in ("static", "dynamic", "lengths")))
                     for start in range(0, len(chunk["uid"]), SCORE_ROWS)]
            yield chunk["uid"], (np.concatenate(parts) if parts else np.empty(0, np.float32))
