"""The ``cryodomain`` command: maps subcommand names to their modules.

Each module in :mod:`cryodomain.commands` has a docstring (its help text), ``add_args(parser)``
and ``main(args)``. Input errors are printed as one line with exit status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cryodomain import __version__
from cryodomain.errors import InputError

# name -> module; the order is the order of `cryodomain --help`.
COMMANDS = {
    "demo": "cryodomain.commands.demo",
    "simulate": "cryodomain.commands.simulate",
    "train": "cryodomain.commands.train",
    "structures": "cryodomain.commands.structures",
    "analyze": "cryodomain.commands.analyze",
    "evaluate": "cryodomain.commands.evaluate",
    "center": "cryodomain.commands.center",
}

EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryodomain",
        description="cryoSPHERE: protein motions from cryo-EM images and an atomic model.",
    )
    parser.add_argument("--version", action="version", version=f"cryodomain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks and debug messages")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        subparser = subparsers.add_parser(
            name,
            parents=[common],
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(subparser)
        subparser.set_defaults(command_main=module.main)
    return parser


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s  %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # Third-party libraries stay quiet unless debugging.
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        args.command_main(args)
    except InputError as error:
        if args.debug:
            raise
        print(f"cryodomain {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"cryodomain {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
