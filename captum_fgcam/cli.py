"""The ``captum-fgcam`` command: subcommands dispatch to their modules' ``run``."""

from __future__ import annotations

import argparse
import sys

from . import explain


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; the exit code."""
    parser = argparse.ArgumentParser(prog="captum-fgcam", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("explain", help="maps for your images and model",
                              description=explain.__doc__.splitlines()[0])
    explain.add_arguments(sub)
    sub.set_defaults(run=explain.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
