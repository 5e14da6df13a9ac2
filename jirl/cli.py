"""The ``jirl`` command: list, show and run registered experiments; export a model as a Hugging
Face folder.

Plugins extend the registries from the user's own code: every module named in the environment
variable ``JIRL_PLUGINS`` (comma-separated module names or ``.py`` paths) and every
``--plugin NAME_OR_PATH`` is imported before the command runs, so what it registers (a loss, a
task, an experiment, ...) can be listed, shown and run by name.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jirl import __version__
from jirl.config import JirlError, config_to_yaml, describe_fields, field_comments
from jirl.experiment import EXPERIMENTS, load_experiments, run_experiment
from jirl.registry import UnknownNameError

USER_ERROR_EXIT_CODE = 2
PLUGINS_ENV = "JIRL_PLUGINS"


class PluginError(JirlError):
    """A plugin that cannot be found or fails while it is imported."""


USER_ERRORS = (JirlError, UnknownNameError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jirl`` console script; returns the exit code. Plugins (``JIRL_PLUGINS``,
    then every ``--plugin``) are imported before the command runs."""
    args = build_parser().parse_args(argv)
    try:
        args.builtin_names = registered_names()  # before the plugins: what jirl itself registers
        args.loaded_plugins = load_plugins(plugin_specs(args))
        return args.command(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


# --------------------------------------------------------------------------- plugins


def plugin_specs(args: argparse.Namespace | None = None, environ=None) -> list[str]:
    """The plugins to import: the comma-separated entries of ``$JIRL_PLUGINS``, then the
    ``--plugin`` options (given before or after the sub-command), blanks dropped."""
    environ = os.environ if environ is None else environ
    specs = [part.strip() for part in environ.get(PLUGINS_ENV, "").split(",")]
    if args is not None:
        specs += list(getattr(args, "plugins", None) or []) + list(getattr(args, "sub_plugins", None) or [])
    return [spec for spec in specs if spec]


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def load_plugin(spec: str):
    """Import one plugin: a ``.py`` file (any path with a separator or a ``.py`` ending) or an
    importable module name. A file is imported once per resolved path, as module
    ``jirl_plugin_<stem>`` (so its registrations are not repeated). Returns the module; raises
    ``PluginError`` for a missing plugin or one that fails while it runs."""
    if _is_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist (resolved to {path}); check {PLUGINS_ENV} / --plugin")
        for module in list(sys.modules.values()):
            if getattr(module, "__file__", None) and Path(module.__file__).resolve() == path:
                return module
        name = f"jirl_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"plugin {spec!r} is not an importable Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise _failed(spec, error) from error
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        if error.name is not None and (spec == error.name or spec.startswith(error.name + ".")):
            raise PluginError(
                f"plugin module {spec!r} not found: it must be importable (on PYTHONPATH / sys.path), or pass a "
                "path to a .py file"
            ) from error
        raise _failed(spec, error) from error
    except Exception as error:
        raise _failed(spec, error) from error


def _failed(spec: str, error: Exception) -> PluginError:
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    at = f" (at {where.filename}:{where.lineno})" if where else ""
    return PluginError(f"plugin {spec!r} failed while importing: {type(error).__name__}: {error}{at}")


def load_plugins(specs: Sequence[str]) -> list[str]:
    """Import every plugin in ``specs`` in order (see ``load_plugin``); returns the specs."""
    for spec in specs:
        load_plugin(spec)
    return list(specs)


def registries() -> dict[str, object]:
    """The registries users extend, by title: tasks, preference losses, objectives, reward-model
    losses, advantage estimators, policy losses, credit schemes and IRL methods (importing the
    modules that fill them)."""
    # Imported for what they register in OBJECTIVES: airl, gail, iq_learn, the paired preference
    # losses (each registered as an objective when the loss is registered) and sft.
    import jirl.irl.adversarial
    import jirl.irl.iq_learn
    import jirl.preference.objective
    import jirl.train.sft  # noqa: F401
    from jirl.credit.schemes import CREDIT_SCHEMES
    from jirl.irl.methods import IRL_METHODS
    from jirl.mdp.tasks import TASKS
    from jirl.preference.losses import PREFERENCE_LOSSES
    from jirl.rewards.losses import PAIRWISE_LOSSES
    from jirl.rl.advantages import ADVANTAGES
    from jirl.rl.policy_losses import POLICY_LOSSES
    from jirl.train.losses import OBJECTIVES

    return {
        "tasks": TASKS,
        "preference losses": PREFERENCE_LOSSES,
        "objectives": OBJECTIVES,
        "reward-model losses": PAIRWISE_LOSSES,
        "advantage estimators": ADVANTAGES,
        "policy losses": POLICY_LOSSES,
        "credit schemes": CREDIT_SCHEMES,
        "IRL methods": IRL_METHODS,
    }


def registered_names() -> dict[str, set[str]]:
    """``{title: names}`` of every registry in ``registries()`` plus ``experiments``, after the
    built-in experiments are loaded."""
    load_experiments()
    names = {title: set(registry.names()) for title, registry in registries().items()}
    names["experiments"] = set(EXPERIMENTS.names())
    return names


class DeferredHelp(argparse.Action):
    """``-h``/``--help`` of ``jirl run``: keeps the sub-command's help text in the namespace and
    lets parsing go on, so that ``run_command`` prints it with the config keys of the experiment
    named on the same line, once the plugins (which may register it) are loaded."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=None, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        """Store ``parser``'s help text as the option's value."""
        setattr(namespace, self.dest, parser.format_help())


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of the ``jirl`` command: ``list``, ``show NAME [--format
    table|yaml]`` and ``run NAME [--config FILE] [--set KEY=VALUE ...] [--out DIR] [--resume]`` and ``export SOURCE
OUT_DIR``.
    Each sub-command stores its handler (``list_command``, ``show_command``, ``run_command``) as
    ``args.command``."""
    parser = argparse.ArgumentParser(prog="jirl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jirl {__version__}")
    plugin_help = (f"import this module or .py file first, so that what it registers can be used (repeatable; "
                   f"also ${PLUGINS_ENV}, comma-separated). A plugin is ordinary Python: its code runs on every "
                   "jirl command, list and show included, so name only files you trust")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_PATH", help=plugin_help)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def add_command(name: str, help: str, **options) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, **options)
        sub.add_argument("--plugin", dest="sub_plugins", action="append", default=[], metavar="MODULE_OR_PATH", help=plugin_help)
        return sub

    list_parser = add_command("list", help="list registered experiments, tasks, losses, estimators, ...")
    list_parser.set_defaults(command=list_command)

    show_parser = add_command("show", help="show an experiment's description and config")
    show_parser.add_argument("name", help="experiment name")
    show_parser.add_argument(
        "--format",
        choices=("table", "yaml"),
        default="table",
        help="table: the description and every config key with its type, default and comment; yaml: the "
        "default config as a YAML file to edit and pass back with jirl run NAME --config FILE",
    )
    show_parser.set_defaults(command=show_command)

    run_parser = add_command("run", help="run an experiment", add_help=False)
    run_parser.add_argument(
        "-h", "--help", dest="help_text", action=DeferredHelp,
        help="show this help and, after NAME, every config key of the experiment, then exit",
    )
    run_parser.add_argument("name", nargs="?", metavar="NAME", help="experiment name (see jirl list)")
    run_parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="a YAML (.yaml/.yml) or JSON (.json) file of config values, nested as the config is (train: "
        "{steps: 10}) or with dotted keys (train.steps: 10); --set wins over it. "
        "jirl show NAME --format yaml writes one holding the defaults",
    )
    run_parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set seed=1 model.d_model=64 (repeatable); a dict or list "
        "whose values hold commas as JSON, e.g. --set 'columns={\"prompt\": \"a,b\"}'",
    )
    run_parser.add_argument("--out", help="output folder (default: runs/<name>-<timestamp>)")
    run_parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    run_parser.set_defaults(command=run_command)
    from jirl.models.export import add_export_arguments

    export_parser = add_command(
        "export", help="write a model or a trained run's policy as a Hugging Face folder (safetensors shards, config, "
        "tokenizer) that transformers loads"
    )
    add_export_arguments(export_parser)
    export_parser.set_defaults(command=export_command)
    return parser


def export_command(args: argparse.Namespace) -> int:
    """``jirl export SOURCE OUT_DIR``: ``SOURCE`` is a model ``load_pretrained`` reads, or the
    folder of a ``jirl run sft|dpo|kto`` run, whose trained policy (LoRA adapters merged into its
    base model, ``jirl.train.trained.load_trained``) is written. Returns the exit code."""
    import dataclasses

    from jirl.models import export
    from jirl.train.trained import is_trained_run, load_trained

    if not is_trained_run(args.source):
        return export.export_command(args)
    options = dict(dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    export.check_dtype(options["dtype"])
    export.parse_size(options["max_shard_size"])
    base, params, _ = load_trained(args.source)
    out = export.export_pretrained(args.out_dir, dataclasses.replace(base, params=params), **options)
    print(f"exported the trained policy of {args.source} to {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """``jirl list``: print a table of every registered experiment and its description, then the
    names in each registry users extend (``registries()``); names a plugin registered are marked
    ``(plugin)``. Returns 0."""
    load_experiments()
    builtin = getattr(args, "builtin_names", None) or {}
    console = Console()

    def label(title: str, name: str) -> Text:
        from_plugin = title in builtin and name not in builtin[title]
        return Text.assemble(name, (" (plugin)", "bold green") if from_plugin else "")

    if not EXPERIMENTS.names():
        console.print("no experiments registered")
    else:
        table = Table("experiment", "description")
        for name in EXPERIMENTS.names():
            table.add_row(label("experiments", name), Text(EXPERIMENTS.get(name).description))
        console.print(table)
    table = Table("registry", "names", title="registered components (extend them with --plugin or $JIRL_PLUGINS)")
    for title, registry in registries().items():
        table.add_row(Text(title), Text(", ").join(label(title, name) for name in registry.names()))
    console.print(table)
    plugins = getattr(args, "loaded_plugins", None)
    if plugins:
        console.print(Text(f"plugins loaded: {', '.join(plugins)}"), soft_wrap=True)
    return 0


def show_command(args: argparse.Namespace) -> int:
    """``jirl show NAME``: print the experiment's description and every config key with its
    type, default and comment (``print_config``); with ``--format yaml``, print its default
    config as a YAML config file instead (``config_to_yaml``). Returns 0; an unknown name raises
    ``UnknownNameError``."""
    load_experiments()
    experiment = EXPERIMENTS.get(args.name)
    if getattr(args, "format", "table") == "yaml":
        sys.stdout.write(config_to_yaml(experiment.default_config(), header=yaml_header(experiment)))
        return 0
    console = output_console()
    console.print(Text.assemble((experiment.name, "bold"), ": ", experiment.description))
    print_config(console, experiment)
    return 0


def output_console() -> Console:
    """The console of ``show``'s and ``run --help``'s tables. Piped (a script reading the keys),
    it is as wide as the tables' contents, so nothing is cut."""
    return Console() if sys.stdout.isatty() else Console(width=10_000)


def print_config(console: Console, experiment) -> None:
    """Print every config key of ``experiment`` (the keys ``--set`` and ``--config`` files
    accept) with its type, default and comment (``describe_fields``, ``field_comments``), and how
    to set them."""
    comments = field_comments(experiment.config_cls)
    table = Table("key", "type", "default", "comment", title=f"config ({experiment.config_cls.__name__})")
    for key, type_name, default in describe_fields(experiment.default_config()):
        table.add_row(Text(key), Text(type_name), Text(default), Text(" ".join(comments.get(key, "").split())))
    console.print(table)
    console.print(Text(f"override with: jirl run {experiment.name} --set key=value ... or --config FILE "
                       f"(jirl show {experiment.name} --format yaml > FILE writes the defaults to edit)"), soft_wrap=True)


def yaml_header(experiment) -> str:
    """The comment lines at the top of ``jirl show NAME --format yaml``'s file."""
    return (f"{experiment.name}: {experiment.description}\n"
            f"Config {experiment.config_cls.__name__} at its defaults. Edit the values (keys left out keep their\n"
            f"defaults) and run: jirl run {experiment.name} --config FILE (--set key=value wins over the file).")


def run_command(args: argparse.Namespace) -> int:
    """``jirl run NAME``: run the experiment with the values of ``args.config_file``
    (``--config``) and ``args.overrides`` (``--set``, which win), into ``args.out``, resuming
    from its latest checkpoint with ``args.resume``; returns 0. With ``--help``, print the help
    and, when NAME is given, the experiment's config keys (``print_config``) instead."""
    if getattr(args, "help_text", None) is not None:
        load_experiments()
        experiment = EXPERIMENTS.get(args.name) if args.name is not None else None  # an unknown name: its error only
        sys.stdout.write(args.help_text)
        if experiment is not None:
            console = output_console()
            console.print()
            print_config(console, experiment)
        return 0
    if args.name is None:
        raise JirlError("jirl run needs the NAME of an experiment: jirl run NAME [--config FILE] [--set KEY=VALUE ...] "
                        "(jirl list shows the names)")
    run_experiment(args.name, overrides=args.overrides, out_dir=args.out, resume=args.resume,
                   config_file=getattr(args, "config_file", None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
