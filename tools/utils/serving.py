"""Export of a fine-tuned campaign model for serving: a static graph of the campaign's scorer
(tools/utils/serving_net.py), ids in, probability out, loadable by Paddle Inference without this project's code.

The campaign's ad ids are built into the graph (the model serves one
campaign), so a server feeds only a user's ids:
    static   [N, 7]   int64, the single-valued user fields
    dynamic  [N, 50]  int64, the 7 id lists side by side (padded with 0)
    lengths  [N, 7]   int64, the real ids of each list
and gets the click probability [N]. DIR/inputs.json describes the inputs
(field names and widths, the vocabulary digest, the campaign) and
DIR/vocabulary.npz maps raw ids to those ids (tools/utils/vocabulary.py).
"""
import os

import numpy as np

from . import schema as S
from .files import write_json

MODEL = "model"  # DIR/model.json (the program) and DIR/model.pdiparams (the weights)
INPUTS = "inputs.json"


def export(net, ad_ids, out_dir, description, vocabulary_bytes=None):
    """Write the campaign model to out_dir; returns the paths of the program and the weights."""
    from .paddle_env import paddle

    from .serving_net import campaign_scorer

    os.makedirs(out_dir, exist_ok=True)
    spec = [paddle.static.InputSpec([None, width], "int64", name) for name, width in
            (("static", len(S.STATIC_FIELDS)), ("dynamic", S.DYNAMIC_WIDTH), ("lengths", len(S.DYNAMIC_FIELDS)))]
    net.eval()
    paddle.jit.save(campaign_scorer(net, ad_ids), os.path.join(out_dir, MODEL), input_spec=spec)
    write_json(os.path.join(out_dir, INPUTS), {
        **description,
        "inputs": {
            "static": {"shape": [None, len(S.STATIC_FIELDS)], "dtype": "int64", "fields": list(S.STATIC_FIELDS)},
            "dynamic": {"shape": [None, S.DYNAMIC_WIDTH], "dtype": "int64", "fields": list(S.DYNAMIC_FIELDS),
                        "widths": list(S.DYNAMIC_WIDTHS), "padding": 0},
            "lengths": {"shape": [None, len(S.DYNAMIC_FIELDS)], "dtype": "int64", "fields": list(S.DYNAMIC_FIELDS)},
        },
        "output": {"shape": [None], "dtype": "float32", "meaning": "click probability"},
        "ad_ids_built_in": [int(a) for a in ad_ids],
        "files": {"program": f"{MODEL}.json", "weights": f"{MODEL}.pdiparams"},
    })
    if vocabulary_bytes is not None:
        with open(os.path.join(out_dir, "vocabulary.npz"), "wb") as f:
            f.write(vocabulary_bytes)
    return os.path.join(out_dir, f"{MODEL}.json"), os.path.join(out_dir, f"{MODEL}.pdiparams")


def predictor(out_dir, threads=1):
    """A Paddle Inference predictor of an exported campaign model (CPU, Paddle's default passes and oneDNN)."""
    from .paddle_env import paddle  # noqa: F401  (Paddle's environment before paddle.inference)
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
