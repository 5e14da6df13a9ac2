"""Check that every public name of ``jirl`` has a docstring, then build the HTML API reference.

    python scripts/build_api_docs.py                 # check, then build into docs/api/
    python scripts/build_api_docs.py --out /tmp/api  # another folder
    python scripts/build_api_docs.py --check-only    # docstrings only, no HTML

A public name is a module of the package (every module needs a module docstring), a function or
class defined in that module whose name does not start with ``_``, or a public method (plain,
static, class method or property) defined in such a class. A dataclass without a docstring gets
an automatic one, ``Name(field: type, ...)``; that counts as missing.

The HTML is built with pdoc; any warning pdoc emits (a name in ``__all__`` that does not
resolve, a module that fails to import, ...) fails the build. Exits 1 listing every missing
docstring and every warning, 0 when there are none.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import pkgutil
import sys
import types
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "api"
PACKAGE = "jirl"


# --------------------------------------------------------------------------- the docstring check


def iter_modules(package: str = PACKAGE) -> Iterator[types.ModuleType]:
    """Import and yield ``package`` and every module below it, in ``pkgutil`` order."""
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        yield importlib.import_module(info.name)


def has_docstring(obj) -> bool:
    """Whether ``obj`` carries a non-empty docstring of its own (not a dataclass's automatic
    ``Name(field: type, ...)`` signature)."""
    # Read __doc__ itself: inspect.getdoc would borrow an overridden method's docstring.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return False
    if inspect.isclass(obj):
        text = doc.strip()
        automatic = "\n" not in text and text.startswith(f"{obj.__name__}(") and text.endswith(")")
        return not automatic
    return True


def _function_of(member):
    """The function behind a class member (method, static/class method, property, cached
    property), or None for anything else."""
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    elif isinstance(member, property):
        member = member.fget
    elif isinstance(member, functools.cached_property):
        member = member.func
    return member if inspect.isfunction(member) else None


def public_members(module: types.ModuleType) -> Iterator[tuple[str, object]]:
    """``(dotted name, object)`` of every public function and class defined in ``module`` and of
    every public method defined in those classes."""
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere; checked where it is defined
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                function = _function_of(member)
                if attr.startswith("_") or function is None:
                    continue
                if not function.__qualname__.startswith(f"{obj.__qualname__}."):
                    continue  # a function defined elsewhere stored as a class attribute
                yield f"{module.__name__}.{name}.{attr}", function


def missing_docstrings(modules: Iterable[types.ModuleType]) -> list[str]:
    """Dotted names of the public names (modules included) of ``modules`` without a docstring."""
    missing = []
    for module in modules:
        if not has_docstring(module):
            missing.append(module.__name__)
        missing.extend(name for name, obj in public_members(module) if not has_docstring(obj))
    return missing


# --------------------------------------------------------------------------- the HTML build


def _resolve_lazy_exports(modules: Iterable[types.ModuleType]) -> None:
    """Bind names that a package lists in ``__all__`` but loads lazily (module ``__getattr__``,
    as ``jirl.data`` does) so that pdoc, which reads the module's namespace, finds them."""
    for module in modules:
        for name in getattr(module, "__all__", ()):
            if name not in vars(module):
                try:
                    setattr(module, name, getattr(module, name))
                except AttributeError:
                    pass  # a name that does not exist: pdoc warns about it


def build_html(out_dir: Path, package: str = PACKAGE) -> list[str]:
    """Write the pdoc HTML reference of ``package`` to ``out_dir``; return the warnings pdoc
    emitted (as ``Category: message`` strings), empty on a clean build."""
    import pdoc
    import pdoc.render

    modules = list(iter_modules(package))  # import first: third-party import-time warnings are not pdoc's
    _resolve_lazy_exports(modules)
    pdoc.render.configure(docformat="restructuredtext", show_source=True, search=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(package, output_directory=out_dir)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv: list[str] | None = None) -> int:
    """Run the check (and the build unless ``--check-only``); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--check-only", action="store_true", help="check the docstrings, build nothing")
    parser.add_argument("--package", default=PACKAGE, help=f"the package to document (default: {PACKAGE})")
    args = parser.parse_args(argv)

    failed = False
    missing = missing_docstrings(iter_modules(args.package))
    if missing:
        failed = True
        print(f"{len(missing)} public name(s) without a docstring:", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
    else:
        print("every public name has a docstring")
    if not args.check_only:
        problems = build_html(args.out, args.package)
        if problems:
            failed = True
            print(f"pdoc emitted {len(problems)} warning(s):", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"API reference written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
