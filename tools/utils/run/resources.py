"""Whether this machine can hold the network a config asks for, checked before anything is built or written.

A mistyped embed_dim (10000000) or num_expert (10^9), or a schema.json whose
vocabulary maxima are far too large, would otherwise end in Paddle's
MemoryError traceback after the run folder was locked. require_memory
estimates the network's parameters from the config and the data's schema
(parameter_estimate: exact for the MetaHeac network of net.py; the baselines
share its tables, which dominate) and refuses a run whose parameters,
gradients and two Adam moments (4 x 4 bytes a parameter) exceed the memory
this process may use: the machine's, or its cgroup's limit when lower.
"""
import os

from ..errors import ConfigError

BYTES_PER_PARAMETER = 4 * 4  # float32 weights, their gradients and Adam's two moments


def parameter_estimate(hp):
    """Parameters of the network of hyper_parameters `hp` (max_idxs already the data's [static, dynamic, ad])."""
    d = hp.get("embed_dim", 1)
    dims, experts, critics = list(hp.get("mlp_dims") or []), hp.get("num_expert", 1), hp.get("num_output", 1)
    static, lists, ad = hp["max_idxs"]
    count = sum(m + 1 for group in hp["max_idxs"] for m in group) * d  # one table row per id of every field
    if dims:
        user, task, last = (len(static) + len(lists)) * d, (1 + len(ad)) * d, dims[-1]
        count += user * experts * dims[0] + experts * dims[0]  # the experts' first layer, fused
        count += sum(experts * (a * b + b) for a, b in zip(dims, dims[1:]))
        count += sum(task * last + last + last * width + width for width in (experts, critics))  # the two gates
        count += last * critics + critics
    return count


def memory_limit():
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when lower (None: unknown)."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limits.append(int(f.read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return min(limits) if limits else None


def size(n_bytes):
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,} bytes"


def require_memory(config):
    """A ConfigError naming the estimate when the config's network cannot fit in this machine's memory."""
    count, limit = parameter_estimate(config["hyper_parameters"]), memory_limit()
    if limit is not None and count * BYTES_PER_PARAMETER > limit:
        raise ConfigError(f"{config['config_path']}: the network would have about {count:,} parameters, "
                          f"{size(count * BYTES_PER_PARAMETER)} with their gradients and Adam's moments, more than "
                          f"the {size(limit)} of memory here; lower hyper_parameters.embed_dim, num_expert or "
                          "mlp_dims (or check the vocabulary maxima in the data's schema.json)")
