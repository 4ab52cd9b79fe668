"""Progress of a long step: a tqdm bar on a terminal, plain periodic lines in a log.

tqdm redraws its bar with carriage returns, which a log file keeps as
hundreds of lines; when stderr is not a terminal the same calls print one
plain line at most every `every` seconds and one at the end instead.
"""
import sys
import time

from tqdm import tqdm


def progress(iterable=None, total=None, desc="", unit="it", every=30.0, disable=False, **tqdm_options):
    """A tqdm bar (update, set_postfix, close, iteration) or, off a terminal, a PlainProgress; nothing at all
    when disable (a --quiet run)."""
    if disable:
        return SilentProgress(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=0.5, **tqdm_options)
    return PlainProgress(iterable, total, desc, unit, every, tqdm_options.get("initial", 0))


class PlainProgress:
    """The part of tqdm's interface the tools use, printing `desc: n/total unit (p%), postfix` lines."""

    def __init__(self, iterable, total, desc, unit, every, initial=0):
        self.iterable, self.total, self.desc, self.unit, self.every = iterable, total, desc, unit, every
        self.n, self.postfix = initial, ""
        self.start = self.last = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._print()

    def set_postfix(self, values=None, refresh=False, **kwargs):
        self.postfix = ", ".join(f"{k} {v}" for k, v in {**(values or {}), **kwargs}.items())

    def set_description(self, desc, refresh=False):
        self.desc = desc

    def close(self):
        if self.start is not None:
            self._print()
            self.start = None

    def _print(self):
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        seconds = time.perf_counter() - (self.start or time.perf_counter())
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{share}, {seconds:.0f} s{tail}", file=sys.stderr, flush=True)


class SilentProgress:
    """The same interface, showing nothing."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass
