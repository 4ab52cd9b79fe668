"""Where the ranks of a run wait for one another for long: the launcher's TCP store (a key-value server in rank 0's
process), and what a rank's failure tells the others (docs/distributed.md).

Collectives (tools/utils/run/collectives.py) end with an error after gloo's 30 s,
so whatever can keep ranks waiting longer goes through the store: rank 0
writing a checkpoint or deciding where to resume (on_main), the ranks finishing
their share of test campaigns (gather). A wait polls the store for at most
METAHEAC_WAIT_SECONDS (6 hours unless set); if rank 0 dies, the store's
connection breaks at once. Every rank makes the same exchanges in the same
order, so the n-th one of every rank uses the same keys.

A rank's exception is posted to the store before it propagates (session), so a
rank waiting for it stops with that rank's message, and a rank's stop (SIGTERM,
Ctrl-C) makes one waiting for it stop with the same line; a lost connection
becomes a DistributedError (one line, exit 2) naming what was being done.
"""
import contextlib
import json
import os
import signal
import time

from .. import errors
from ..errors import STOP_SIGNALS, DistributedError, Stopped, UserError, restart_calls_on_stop

DEFAULT_WAIT_SECONDS = 6 * 3600
# How long rank 0 waits at its end for the others to finish reading from the store: {after success, after a failure}
# (after a failure another rank may sit in a collective until rank 0's exit ends it).
FAREWELL_SECONDS = {False: 120.0, True: 10.0}
_PREFIX = "metaheac"


def wait_seconds():
    """The longest one rank waits for another through the store: METAHEAC_WAIT_SECONDS, else 6 hours. A rank that
    dies is noticed at once; this bounds a hang."""
    return float(os.environ.get("METAHEAC_WAIT_SECONDS") or DEFAULT_WAIT_SECONDS)


def first_line(error):
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class StoreChannel:
    """Rank `rank` of `size`'s exchanges through the launcher's store (after init_parallel_env)."""

    def __init__(self, paddle, rank, size):
        self.rank, self.size, self.main = rank, size, rank == 0
        self.store = paddle.base.core.create_or_get_global_tcp_store()
        self.wait_seconds = wait_seconds()
        self.calls, self.resume_hint = 0, ""

    def _key(self):
        self.calls += 1  # every rank makes the same exchanges in the same order
        return f"{_PREFIX}/{self.calls}"

    def on_main(self, run, what):
        """run() on rank 0 alone; every rank returns its result (JSON-able) or raises its error."""
        key = self._key()
        if self.main:
            try:
                result = run()
            except UserError as e:
                self._post(key, {"error": str(e), "class": type(e).__name__})
                raise
            except Stopped as e:  # the others stop with the same line (the launcher stops every rank anyway)
                self._post(key, {"stopped": str(e), "exit_code": e.exit_code})
                raise
            except BaseException as e:
                self._post(key, {"error": f"rank 0 failed while {what}: {first_line(e)}",
                                 "class": DistributedError.__name__})
                raise
            self._post(key, {"result": result})
            return result
        self._wait(key, 1, what)
        reply = json.loads(self._call(self.store.get, f"{key}/0", what=what))
        if "stopped" in reply:
            raise Stopped(reply["stopped"], reply["exit_code"])
        if "error" in reply:
            error = getattr(errors, reply["class"], UserError)
            raise (error if isinstance(error, type) and issubclass(error, UserError) else UserError)(reply["error"])
        return reply["result"]

    def _post(self, key, obj):
        self._call(self.store.set, f"{key}/0", json.dumps(obj), what="telling the other ranks")
        self._call(self.store.add, f"{key}/count", 1, what="telling the other ranks")

    def gather(self, data, what):
        """Every rank's bytes, in rank order, on rank 0; None on the others."""
        key = self._key()
        self._call(self.store.set, f"{key}/{self.rank}", data, what=what)
        self._call(self.store.add, f"{key}/count", 1, what=what)
        if not self.main:
            return None
        self._wait(key, self.size, what)
        return [self._call(self.store.get, f"{key}/{r}", what=what) for r in range(self.size)]

    def barrier(self, what):
        key = self._key()
        self._call(self.store.add, f"{key}/count", 1, what=what)
        self._wait(key, self.size, what)

    def _wait(self, key, count, what):
        """Until `count` ranks have posted under key; stops on another rank's posted failure or after wait_seconds."""
        start, pause = time.monotonic(), 0.005
        while self._call(self.store.add, f"{key}/count", 0, what=what) < count:
            failure = self.posted_failure()
            if failure:
                raise DistributedError(f"rank {self.rank} of {self.size}: {what}: {failure}")
            stopped = self.posted_stop()
            if stopped:
                raise stopped
            if time.monotonic() - start > self.wait_seconds:
                raise DistributedError(f"rank {self.rank} of {self.size}: {what}: waited {self.wait_seconds:.0f} s "
                                       "for the other ranks; one of them hangs (see the launcher's log)"
                                       + self._hint())
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _call(self, op, *args, what):
        restart_calls_on_stop()
        try:
            return op(*args)
        except (RuntimeError, ValueError, OSError) as e:  # "TCP send error ... Broken pipe": rank 0 is gone
            raise self.lost(what, e) from e

    # ------------------------------------------------------------------ failure
    @contextlib.contextmanager
    def session(self):
        """Around a rank's whole run: an exception is posted to the other ranks before it propagates, and rank 0
        (whose process serves the store) leaves only once the others are done reading from it."""
        failed = True
        try:
            # The stops held since start-up (cli.run's hold_stops) arrive here, inside the session: a rank 0
            # stopped before it would have taken the store with it while the others still used it.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            yield
            failed = False
        except (Stopped, KeyboardInterrupt) as e:
            failed = False  # the training loop's ranks stop after the same meta-step; elsewhere one may be first
            self._post_stop(e if isinstance(e, Stopped) else Stopped("interrupted", 128 + signal.SIGINT))
            raise
        except DistributedError:  # another rank's failure: nothing to post, and no one left to wait for
            failed = None
            raise
        except BaseException as e:
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
            try:
                self.store.set(f"{_PREFIX}/failure/{self.rank}", message)
                self.store.add(f"{_PREFIX}/failed/{self.rank}", 1)
            except Exception:  # noqa: BLE001  (rank 0 and its store are gone: the launcher reports it)
                pass
            raise
        finally:
            if failed is not None:
                self._farewell(FAREWELL_SECONDS[failed])

    def _farewell(self, seconds):
        """The other ranks say they are done; rank 0 waits (at most `seconds`) for all of them, so that none loses
        the store (served by rank 0's process) while it still reads a result or an error from it."""
        restart_calls_on_stop()
        try:
            if not self.main:
                self.store.add(f"{_PREFIX}/done", 1)
                return
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                gone = self.store.add(f"{_PREFIX}/done", 0) + sum(
                    self.store.add(f"{_PREFIX}/failed/{r}", 0) > 0 for r in range(1, self.size))
                if gone >= self.size - 1:
                    return
                time.sleep(0.02)
        except Exception:  # noqa: BLE001  (the store is gone with rank 0: nothing to wait for)
            pass

    def posted_failure(self):
        """'rank r failed: <its error>' of the first rank that posted a failure, or None."""
        try:
            for r in range(self.size):
                if r != self.rank and self.store.add(f"{_PREFIX}/failed/{r}", 0):
                    return f"rank {r} failed: {self.store.get(f'{_PREFIX}/failure/{r}').decode()}"
        except Exception:  # noqa: BLE001  (the store is gone with rank 0)
            return None
        return None

    def _post_stop(self, stopped):
        """Tell the other ranks that this one stopped: one that waits for it stops with the same line."""
        try:
            self.store.set(f"{_PREFIX}/stop/{self.rank}", json.dumps([str(stopped), stopped.exit_code]))
            self.store.add(f"{_PREFIX}/stopped/{self.rank}", 1)
        except Exception:  # noqa: BLE001  (rank 0 and its store are gone: the launcher reports it)
            pass

    def posted_stop(self):
        """The Stopped of the first other rank that posted one (_post_stop), or None."""
        try:
            for r in range(self.size):
                if r != self.rank and self.store.add(f"{_PREFIX}/stopped/{r}", 0):
                    return Stopped(*json.loads(self.store.get(f"{_PREFIX}/stop/{r}")))
        except Exception:  # noqa: BLE001  (the store is gone with rank 0)
            return None
        return None

    def lost(self, what, error):
        """The DistributedError of a lost connection (store or collective) while doing `what`; the other rank's
        Stopped if it stopped."""
        stopped = self.posted_stop()
        if stopped:
            return stopped
        cause = self.posted_failure() or (f"another rank died or stopped answering ({first_line(error)}); the "
                                          "launcher's output names it, and its log is in the launcher's --log_dir "
                                          "(workerlog.N)")
        return DistributedError(f"rank {self.rank} of {self.size}: {what}: {cause}" + self._hint())

    def _hint(self):
        return f"; {self.resume_hint}" if self.resume_hint else ""
