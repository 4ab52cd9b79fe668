"""What every command line shares: PaddleRec's -m CONFIG / -o KEY=VALUE options and one way to end.

run(main) calls main(argv) and turns a UserError into one line on stderr,
`error: <message>`, and exit code 2; Ctrl-C into `interrupted` and 130.
"""
import argparse
import sys

from .errors import UserError


def argument_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-m", "--config_yaml", required=True, metavar="CONFIG",
                        help="the YAML config of a model folder")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. -o runner.epochs=2 hyper_parameters.local_lr=1e-4")
    return parser


def run(main, argv=None):
    """main(argv)'s exit code (None counts as 0), with user errors as one line each."""
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
