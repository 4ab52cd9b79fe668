"""What every command line shares: PaddleRec's -m CONFIG / -o KEY=VALUE options and one way to end.

run(main) calls main(argv) and ends in one line on stderr whatever happens
that the user can act on: a UserError becomes `error: <message>` and exit
code 2; SIGTERM (what schedulers send) and Ctrl-C become a line saying so
and 128 + the signal (143, 130), instead of Paddle's C++ stack dump. A tool
that can keep its work (the trainer saves a step checkpoint) handles the
signals itself while it runs and raises Stopped with its own message.
"""
import argparse
import signal
import sys

from .errors import Stopped, UserError


def argument_parser(description, examples=(), override_example="runner.epochs=2 hyper_parameters.local_lr=1e-4"):
    """The parser of a tool: -m, -o (its help showing override_example) and --help ending with the examples."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None)
    parser.add_argument("-m", "--config_yaml", required=True, metavar="CONFIG",
                        help="the YAML config of a model folder")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. -o {override_example}")
    return parser


def _stop(signum, frame):
    raise Stopped(f"stopped by {signal.Signals(signum).name}", 128 + signum)


def _ending():
    """Ignore SIGTERM while the last line is printed: paddle.distributed.launch sends its SIGTERM to every rank
    when one fails, and one raised inside the print would bury the message under a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run(main, argv=None):
    """main(argv)'s exit code (None counts as 0), with user errors and stop signals as one line each."""
    previous, previous_int = signal.signal(signal.SIGTERM, _stop), signal.getsignal(signal.SIGINT)
    try:
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
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
