"""The ``captum-fgcam`` command: ``explain`` your images, or ``benchmark`` the methods."""

from __future__ import annotations

import argparse
import sys

import matplotlib

from . import explain
from .benchmark import command as benchmark
from .methods import MethodError
from .outputs import OutputError
from .propagation import LayerError, MissingRuleError
from .usage import UsageError, one_line

#: mistakes a command reports as one line on stderr (exit code 2) instead of a traceback
USER_ERRORS = (UsageError, OutputError, LayerError, MissingRuleError, MethodError)


def _plain(doc: str | None) -> str:
    """A docstring's first line as plain text for ``--help`` (no reStructuredText quotes)."""
    return (doc or "").splitlines()[0].replace("``", "")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; the exit code."""
    parser = argparse.ArgumentParser(prog="captum-fgcam", description=_plain(__doc__))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("explain", help="maps for your images and model",
                              description=_plain(explain.__doc__))
    explain.add_arguments(sub)
    sub.set_defaults(run=explain.explain)
    sub = commands.add_parser("benchmark", help="the paper's comparison: methods x layers x "
                              "metrics as tables and a plot",
                              description=_plain(benchmark.__doc__))
    benchmark.add_arguments(sub)
    sub.set_defaults(run=benchmark.run_command)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # figures are saved, never shown
    try:
        args.run(args)
    except USER_ERRORS as err:
        print(f"captum-fgcam {args.command}: error: {one_line(err, 1000)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
