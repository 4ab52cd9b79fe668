"""What every command line shares: PaddleRec's -m CONFIG / -o KEY=VALUE options and one way to end.

run(main) calls main(argv) and ends in one line on stderr whatever happens
that the user can act on: a UserError becomes `error: <message>` and exit
code 2; SIGTERM (what schedulers send) and Ctrl-C become a line saying so
and 128 + the signal (143, 130), at any moment: while the tool's modules load
(tools/_bootstrap.py holds the signals until run() has its handlers; a rank of a
launched run holds them until the ranks have met), while
Paddle loads (tools/utils/paddle_env.py holds them and takes back SIGTERM from
Paddle's C++ handler, whose stack dump it would print) and at any point of the
work. Whatever a tool writes goes to a temporary name or a staging folder
first, so a stop leaves nothing half-written. A tool that can keep its work
(the trainer saves a step checkpoint) handles the signals itself while it
runs and raises Stopped with its own message. A tool ends with
run_and_exit(main), which ignores a stop that comes once the work is over.
"""
import argparse
import os
import signal
import sys
import threading

from .errors import STOP_SIGNALS, Stopped, UserError


def argument_parser(description, examples=(), override_example="runner.epochs=2 hyper_parameters.local_lr=1e-4"):
    """The parser of a tool: -m, -o (its help showing override_example) and --help ending with the examples."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None)
    parser.add_argument("-m", "--config_yaml", required=True, metavar="CONFIG",
                        help="the YAML config of a model folder")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. -o {override_example}")
    return parser


_resends = []  # timers sending a stop signal again (cancelled when run() ends)
_stopping = []  # the signal whose Stopped or KeyboardInterrupt is on its way out of run()
# A forked child (a pool's worker) starts with no stop on its way out: it inherits _stop, and must still die of
# the SIGTERM that Pool.terminate() sends it (one forked while its parent stopped ignored it: terminate hung).
os.register_at_fork(after_in_child=_stopping.clear)


def epoch_arg(text):
    """argparse type of --epoch: an epoch number, or best (the checkpoint best on validation campaigns)."""
    if text == "best" or text.isdigit():
        return text if text == "best" else int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: give an epoch number or best")


def _send_later(signum):
    """Send signum to this process again in 10 ms, from a timer thread: its handler then runs elsewhere."""
    timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    _resends.append(timer)


def _stop(signum, frame):
    """SIGTERM and SIGINT while run() runs: Stopped or KeyboardInterrupt where the signal found the program;
    but not inside threading.Thread.start, where an exception breaks the thread being started (it prints a
    KeyError traceback of its own: seen as a multiprocessing pool started): there the signal comes again later.

    Once, then nothing while that exception makes its way out: another stop would break the cleanup it runs
    through, or raise inside run()'s own handling (a traceback after the one line). paddle.distributed.launch
    sends its SIGTERM up to three times, and Ctrl-C reaches its ranks as SIGINT and then that SIGTERM."""
    if frame is not None and frame.f_code is threading.Thread.start.__code__:
        return _send_later(signum)
    if _stopping:
        return
    _stopping.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(f"stopped by {signal.Signals(signum).name}", 128 + signum)


def _redeliver(hook):
    """sys.unraisablehook for run(): a stop signal's exception raised where Python ignores exceptions (a weakref
    callback, a __del__: seen inside pandas' imports) would be lost; the signal comes again later instead."""
    def handle(unraisable):
        error = unraisable.exc_value
        signum = signal.SIGINT if isinstance(error, KeyboardInterrupt) else \
            error.exit_code - 128 if isinstance(error, Stopped) else None
        if signum not in STOP_SIGNALS:
            return hook(unraisable)
        _stopping.clear()
        _send_later(signum)
    return handle


def _ending():
    """Ignore the stop signals while the last line is printed: paddle.distributed.launch sends its SIGTERM to
    every rank when one fails, and one raised inside the print would bury the message under a traceback."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def run_and_exit(main, hold_stops=False):
    """A command line's end: exit with run(main)'s code. The run is over, its outputs in place, so a stop signal
    that comes while Python shuts down is ignored: left to its default it killed a finished run, no line said
    so, and the exit status said killed (found by stopping the data tools at random moments)."""
    sys.exit(run(main, hold_stops=hold_stops, restore=False))


def run(main, argv=None, hold_stops=False, restore=True):
    """main(argv)'s exit code (None counts as 0), with user errors and stop signals as one line each.

    hold_stops: SIGTERM and SIGINT stay blocked (they wait) until main unblocks them. A rank under
    paddle.distributed.launch holds them until the ranks have met and it is inside its session
    (tools/utils/run/store_channel.StoreChannel.session): the launcher stops every rank at once, and a rank
    stopped before the meeting left the others waiting in Paddle's C++ for it, deaf to the signal, until the
    launcher killed them 30 s later with no line said.

    restore: put back the signal handlers there before; run_and_exit ignores the stop signals instead (had it
    restored them first, a stop in between still killed the finished run by the default handler)."""
    previous, previous_int = signal.signal(signal.SIGTERM, _stop), signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # not where Ctrl-C is ignored (a background job, a worker)
        signal.signal(signal.SIGINT, _stop)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver(sys.unraisablehook)
    try:
        if not hold_stops:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one held since start-up arrives here
        return main(argv) or 0
    except UserError as e:
        _ending()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        _ending()
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        _ending()
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        sys.unraisablehook = previous_hook
        _stopping.clear()
        while _resends:
            _resends.pop().cancel()
        if not restore:
            _ending()
        else:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
