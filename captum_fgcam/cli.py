"""The ``captum-fgcam`` command: ``explain`` your images, or ``benchmark`` the methods."""

from __future__ import annotations

import argparse
import sys

from . import explain
from .benchmark import command as benchmark


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; the exit code."""
    parser = argparse.ArgumentParser(prog="captum-fgcam", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("explain", help="maps for your images and model",
                              description=explain.__doc__.splitlines()[0])
    explain.add_arguments(sub)
    sub.set_defaults(run=explain.run)
    sub = commands.add_parser("benchmark", help="the paper's comparison: methods x layers x "
                              "metrics as tables and a plot",
                              description=benchmark.__doc__.splitlines()[0])
    benchmark.add_arguments(sub)
    sub.set_defaults(run=benchmark.run_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
