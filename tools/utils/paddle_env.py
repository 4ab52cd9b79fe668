"""Import Paddle without its start-up noise, and set threads, device and seeds.

`import paddle` prints C++ glog lines (silenced by GLOG_minloglevel, which must
be set before the import), a "No ccache found" UserWarning about compiling C++
extensions, which we never do, and installs an INFO handler on the root logger
(which would make any library's logging.info reach the terminal). Call this
module's load() instead of importing paddle (`from tools.utils.paddle_env
import paddle` calls it); importing the module itself changes nothing.

It also sets two things that must precede the import and that shorten a
meta-step on this project's 2-core AMD machines (docs/performance.md):
MKL_DEBUG_CPU_TYPE=5 on AMD CPUs, so the MKL inside Paddle takes its AVX2
matrix kernels instead of a generic path, and glibc malloc settings that keep
table-sized gradient buffers in the heap instead of returning them to the
kernel after every step (each return costs page faults on the next use).
An explicit MKL_DEBUG_CPU_TYPE or MALLOC_* in the environment wins.

The tools load model modules through tools/utils/run/model_folder.py, which
calls load() first, and the tests through tests/conftest.py; code of one's
own that imports paddle (or net.py) before load() loses those settings, and
load() says so when Paddle came first.
"""
import ctypes
import logging
import os
import random
import signal
import sys
import threading
import warnings

import numpy as np

from .errors import STOP_SIGNALS


def _is_amd_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


def _keep_freed_memory():
    """glibc mallopt: no mmap for large blocks (M_MMAP_MAX 0), no trimming (M_TRIM_THRESHOLD 2 GiB)."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD


_loaded = []  # the paddle module, once load() has imported it


def load():
    """Paddle, imported once with the settings above made first (later calls return it): GLOG_minloglevel,
    MKL_DEBUG_CPU_TYPE on AMD CPUs, the malloc options, the ccache warning filtered, the root logger as it was,
    SIGTERM and SIGINT held while it loads. `from tools.utils.paddle_env import paddle` calls it."""
    if _loaded:
        return _loaded[0]
    if "paddle" in sys.modules:
        warnings.warn("paddle was imported before tools.utils.paddle_env, too late for the CPU settings made before "
                      "Paddle loads (MKL's AVX2 kernels on AMD CPUs, malloc options: docs/performance.md); "
                      "import tools.utils.paddle_env before paddle or net", stacklevel=2)
    os.environ.setdefault("GLOG_minloglevel", "2")
    if _is_amd_cpu():
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    _keep_freed_memory()
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    # Paddle installs a C++ handler for SIGTERM while it loads (it prints a stack dump and aborts): SIGTERM and
    # SIGINT wait while it loads, then the Python handlers there before get them back, and one that came meanwhile
    # arrives (tools/utils/cli.py turns it into one line; a KeyboardInterrupt inside the import would be an
    # ImportError).
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main_thread else {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        import paddle
    finally:
        for stop, handler in handlers.items():
            if handler is not None:
                signal.signal(stop, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for handler in [h for h in root.handlers if h not in root_handlers]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    _loaded.append(paddle)
    return paddle


def __getattr__(name):
    """`paddle`: load()'s module, so that `from tools.utils.paddle_env import paddle` makes the settings first."""
    if name == "paddle":
        return load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def set_threads(n):
    """Use n CPU threads for Paddle's kernels (setting OMP_NUM_THREADS instead makes paddle warn)."""
    load().base.core.set_num_threads(int(n))


def set_device(use_gpu, quiet=False):
    """Run on a GPU when asked and Paddle has CUDA, otherwise on the CPU; returns "gpu" or "cpu".

    The one place that chooses the device (tools/utils/run/distributed.py picks the collective backend from its
    answer). Under paddle.distributed.launch each rank takes the card the launcher gave it
    (FLAGS_selected_gpus); alone, card 0. quiet: no note (ranks other than 0).
    """
    paddle = load()
    cuda = paddle.is_compiled_with_cuda()
    if use_gpu and not cuda and not quiet:
        print("note: runner.use_gpu is True but this Paddle build has no CUDA; running on the CPU")
    if use_gpu and cuda:
        card = int((os.environ.get("FLAGS_selected_gpus") or "0").split(",")[0])
        paddle.set_device(f"gpu:{card}")
        return "gpu"
    paddle.set_device("cpu")
    return "cpu"


def derived_seed(*parts):
    """A 32-bit seed from non-negative integers, e.g. (run seed, epoch): distinct parts, unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_all(seed):
    """Seed Paddle, NumPy's global generator and Python's `random`."""
    load().seed(seed)
    np.random.seed(seed)
    random.seed(seed)
