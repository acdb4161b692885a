"""The ``cryodomain`` command: maps subcommand names to their modules.

Each module in :mod:`cryodomain.commands` has a docstring (its help text), ``add_args(parser)``
and ``main(args)``. Input errors are printed as one line with exit status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import signal
import sys
from pathlib import Path

from cryodomain import __version__
from cryodomain.allocator import keep_freed_memory
from cryodomain.errors import InputError
from cryodomain.io.atomic import WRITE_ERRNOS, write_failure

# name -> module; the order is the order of `cryodomain --help`.
COMMANDS = {
    "demo": "cryodomain.commands.demo",
    "simulate": "cryodomain.commands.simulate",
    "train": "cryodomain.commands.train",
    "structures": "cryodomain.commands.structures",
    "analyze": "cryodomain.commands.analyze",
    "select": "cryodomain.commands.select",
    "report": "cryodomain.commands.report",
    "evaluate": "cryodomain.commands.evaluate",
    "center": "cryodomain.commands.center",
    "convert": "cryodomain.commands.convert",
}

EXIT_INPUT_ERROR = 2


def _module_docstring(module_name: str) -> str:
    """A command module's docstring, read without importing it (importing pulls in torch & co.)."""
    spec = importlib.util.find_spec(module_name)
    source = Path(spec.origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)) or ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (for its flags), the others give
    their help text from their docstring, so that starting one command stays quick."""
    parser = argparse.ArgumentParser(
        prog="cryodomain",
        description="cryoSPHERE: protein motions from cryo-EM images and an atomic model.",
    )
    parser.add_argument("--version", action="version", version=f"cryodomain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks and debug messages")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name) if name == command else None
        doc = ((module.__doc__ if module else _module_docstring(module_name)) or "").strip()
        subparser = subparsers.add_parser(
            name,
            parents=[common],
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module is not None:
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
    arguments = sys.argv[1:] if argv is None else list(argv)
    # The command is the first word that is not an option (top-level options take no value).
    command = next((word for word in arguments if not word.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(arguments)
    configure_logging(args.debug)
    keep_freed_memory()
    try:
        args.command_main(args)
    except InputError as error:
        if args.debug:
            raise
        # One line whatever the message holds (a library's text may span several).
        print(f"cryodomain {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as error:
        # A full disk or a folder without write permission is the user's to fix, not a bug.
        if args.debug or error.errno not in WRITE_ERRNOS:
            raise
        print(f"cryodomain {args.command}: error: {write_failure(error.filename or '(output)', error)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt as stopped:
        # Training stops on SIGINT/SIGTERM after saving a checkpoint and says where it is.
        print(f"cryodomain {args.command}: {stopped or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(stopped, "signal_number", signal.SIGINT)
    return 0
