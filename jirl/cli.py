"""The ``jirl`` command: list, show and run registered experiments."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jirl import __version__
from jirl.config import JirlError, describe_fields
from jirl.experiment import EXPERIMENTS, load_experiments, run_experiment
from jirl.registry import UnknownNameError

USER_ERROR_EXIT_CODE = 2
USER_ERRORS = (JirlError, UnknownNameError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jirl`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of the ``jirl`` command: ``list``, ``show NAME`` and ``run NAME
    [--set KEY=VALUE ...] [--out DIR] [--resume]``. Each sub-command stores its handler
    (``list_command``, ``show_command``, ``run_command``) as ``args.command``."""
    parser = argparse.ArgumentParser(prog="jirl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jirl {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    list_parser = commands.add_parser("list", help="list registered experiments")
    list_parser.set_defaults(command=list_command)

    show_parser = commands.add_parser("show", help="show an experiment's description and config")
    show_parser.add_argument("name", help="experiment name")
    show_parser.set_defaults(command=show_command)

    run_parser = commands.add_parser("run", help="run an experiment")
    run_parser.add_argument("name", help="experiment name")
    run_parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set seed=1 model.d_model=64 (repeatable)",
    )
    run_parser.add_argument("--out", help="output folder (default: runs/<name>-<timestamp>)")
    run_parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    run_parser.set_defaults(command=run_command)
    return parser


def list_command(args: argparse.Namespace) -> int:
    """``jirl list``: print a table of every registered experiment and its description; returns
    0."""
    load_experiments()
    console = Console()
    if not EXPERIMENTS.names():
        console.print("no experiments registered")
        return 0
    table = Table("experiment", "description")
    for name in EXPERIMENTS.names():
        table.add_row(Text(name), Text(EXPERIMENTS.get(name).description))
    console.print(table)
    return 0


def show_command(args: argparse.Namespace) -> int:
    """``jirl show NAME``: print the experiment's description and every config key with its type
    and default (the keys ``--set`` accepts); returns 0. An unknown name raises
    ``UnknownNameError``."""
    load_experiments()
    experiment = EXPERIMENTS.get(args.name)
    console = Console()
    console.print(Text.assemble((experiment.name, "bold"), ": ", experiment.description))
    table = Table("key", "type", "default", title=f"config ({experiment.config_cls.__name__})")
    for key, type_name, default in describe_fields(experiment.default_config()):
        table.add_row(Text(key), Text(type_name), Text(default))
    console.print(table)
    console.print(Text(f"override with: jirl run {experiment.name} --set key=value ..."))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """``jirl run NAME``: run the experiment with ``args.overrides`` (``--set``), into
    ``args.out``, resuming from its latest checkpoint with ``args.resume``; returns 0."""
    run_experiment(args.name, overrides=args.overrides, out_dir=args.out, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
