"""The `keras-winit` command line (also `python -m keras_winit`).

Subcommands (each module defines `add_arguments(parser)` and `run(args)`):

- `keras-winit demo`: trains a deep ReLU network on the digits data with
  Glorot and with He initialization and compares them
  (`keras_winit.demo`).
- `keras-winit diagnose MODEL.keras BATCH.npy`: signal-propagation table of
  a saved model (`keras_winit.diagnostics`).
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). Each module defines `add_arguments(parser)`
# and `run(args) -> int`.
_COMMANDS = {
    "demo": (
        "keras_winit.demo",
        "train a deep ReLU net with Glorot vs He init on digits",
    ),
    "diagnose": (
        "keras_winit.diagnostics",
        "print per-layer signal statistics of a saved model on a batch",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `keras-winit` parser, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="keras-winit",
        description="Weight initialization tools for Keras 3.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-winit` on `argv` (default `sys.argv[1:]`); returns the
    exit status."""
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
