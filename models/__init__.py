"""The baseline and ablation model folders of the benchmark (tools/benchmark.py); MetaHeac is the top level."""
