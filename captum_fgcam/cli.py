"""The ``captum-fgcam`` command: ``explain`` your images, or ``benchmark`` the methods."""

from __future__ import annotations

import argparse
import sys

from . import explain
from .benchmark import command as benchmark


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
    sub.set_defaults(run=explain.run)
    sub = commands.add_parser("benchmark", help="the paper's comparison: methods x layers x "
                              "metrics as tables and a plot",
                              description=_plain(benchmark.__doc__))
    benchmark.add_arguments(sub)
    sub.set_defaults(run=benchmark.run_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
