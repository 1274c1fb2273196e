"""Output files written safely: checked before the work (``check_output_path``, ``check_not_folders``,
``warn_if_disk_short``), written through a temporary sibling and a rename (``atomic_path``; a set of
files: ``staging_folder``), and a full disk said in words (``disk_full_message``).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DataError

__all__ = ["atomic_path", "staging_folder", "check_output_path", "check_not_folders", "check_name_fits", "warn_if_disk_short",
           "disk_full_message", "DISK_REFUSAL_FACTOR", "remove_orphans"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    Nothing partial is ever visible under ``path``; the temporary file is removed on failure.
    """
    path = Path(path)
    if path.is_dir():  # (commands check their outputs first; this is the last guard, before the work)
        raise DataError(f"{path}: is a folder where a file is to be written; move it away or choose another output")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".part", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual mode
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def staging_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new hidden folder beside ``path`` to write a set of files into, removed with what is left
    in it when the block ends: files renamed out of it (same file system) replace others together, not
    one by one over the writing. One a killed writer left goes as ``atomic_path``'s files do; the
    folders made for it go too if nothing was put in them (a refused command leaves no folder behind)."""
    path = Path(path)
    made = []  # innermost first
    for folder in (path.parent, *path.parent.parents):
        if os.path.lexists(folder):
            break
        made.append(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".part", dir=path.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds what was written
                break


#: zlib saves ~10 % on chaotic float states: an output this many times the free space cannot fit
DISK_REFUSAL_FACTOR = 4.0


def warn_if_disk_short(path: str | Path, raw_bytes: int, what: str, *, fix: str | None = None,
                       warn: bool = True) -> bool:
    """Log a warning (and return ``True``) when the file system of ``path`` has less free space than
    ``raw_bytes``, the size of what ``what`` writes before compression (zlib saves ~10 % on chaotic
    states: measured 0.88-0.90 on the ks_l22 files), so that a full disk is not first met at the end.
    With ``fix`` (the keys to change, in words) ``DataError`` instead when the size is more than
    ``DISK_REFUSAL_FACTOR`` times the free space; ``warn=False``: no warning (other MPI ranks)."""
    ancestor = _existing_ancestor(Path(path).parent)
    try:
        free = shutil.disk_usage(ancestor).free
    except OSError:
        return False
    if free >= raw_bytes:
        return False
    if fix is not None and raw_bytes > DISK_REFUSAL_FACTOR * free:
        raise DataError(f"{what} writes {raw_bytes / 2**30:.3g} GiB to {ancestor} before compression (which saves "
                        f"~10% on chaotic states), more than {DISK_REFUSAL_FACTOR:g}x the {free / 2**30:.3g} GiB free "
                        f"there; {fix}")
    if warn:
        log.warning("%s writes up to %.3g GiB to %s (before compression, which saves ~10%% on chaotic states); "
                    "only %.3g GiB are free there: it may fail when the disk fills (free some space, or choose another "
                    "--out)", what, raw_bytes / 2**30, ancestor, free / 2**30)
    return True


def disk_full_message(failure: BaseException) -> str | None:
    """What to tell the user when ``failure`` or what caused it (the rollout's writer thread and HDF5
    wrap it) is a full disk or an exceeded quota -- a message without a traceback -- else ``None``."""
    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
                "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            # one line: HDF5's report spans several, with the time, buffer addresses and offsets
            said = str(error) if isinstance(error, OSError) else next(
                words for words in ("No space left on device", "Disk quota exceeded") if words in str(error))
            return f"no space left on the device ({' '.join(said.split())}); free some space or choose another --out"
        error = error.__cause__ or error.__context__
    return None

def check_output_path(path: str | Path, option: str = "--out", *, folder: bool = False,
                      inputs: dict[str, str | Path] | None = None) -> Path:
    """``DataError`` now, before any work, unless ``path`` can become an output file (``folder``: a folder).

    The path may not exist yet (missing parent folders are created when it is written), but it must
    not be a folder (a file), its nearest existing ancestor (a folder's own self) must be a writable
    folder, and it must not be one of the command's ``inputs`` (``{key naming it: path}``), which it
    would replace. Its name must leave room for the temporary file beside it (``atomic_path``), and it
    must be UTF-8 (NetCDF and HDF5 store names as UTF-8).
    """
    path = Path(path)
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeError:
        raise DataError(f"{option} {str(path)!r}: not a UTF-8 path, which NetCDF and HDF5 need; choose a name in "
                        "UTF-8") from None
    try:
        return _check_output_path(path, option, folder=folder, inputs=inputs)
    except OSError as error:  # a name too long for the file system, a folder on the way one cannot search, ...
        raise DataError(f"{option} {path}: cannot be used ({error.strerror or error}); {_remedy(error, 'path')}") \
            from None


def _check_output_path(path: Path, option: str, *, folder: bool, inputs: dict[str, str | Path] | None) -> Path:
    if not folder:  # atomic_path writes ".NAME.<host>.<pid>.<random>.part" beside it first, and beside it
        # its siblings' (".NAME.checkpoint", "<stem>.checkpoint.pt", ...: up to 16 more) from any rank's pid
        temporary = len(os.fsencode(f".{path.name}.{_host_tag()}.")) + len("1234567.12345678.part") + 16
        limit = _name_max(path)
        if temporary > limit:
            raise DataError(f"{option} {path}: the name is too long; the temporary files written beside it need "
                            f"up to {temporary} of the file system's {limit} characters: shorten it by "
                            f"{temporary - limit}")
    for key, source in (inputs or {}).items():
        if source and (path.resolve() == Path(source).resolve()
                       or path.exists() and Path(source).exists() and os.path.samefile(path, source)):
            raise DataError(f"{option} {path}: is the input file {key}, which the output would replace; "
                            "give another name")
    if path.exists() and path.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file name")
        raise DataError(f"{option} {path}: is {kind}; give {wanted}")
    ancestor = _existing_ancestor(path if folder else path.parent)  # an existing folder: written into itself
    if not ancestor.is_dir():
        what = "a symbolic link to nothing (or a loop)" if ancestor.is_symlink() else "a file, not a folder"
        raise DataError(f"{option} {path}: {ancestor} is {what}; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path}: cannot write in {ancestor}; choose a folder you can write to")
    try:  # permission bits do not tell everything (root, read-only or pseudo file systems): try it
        with tempfile.TemporaryFile(dir=ancestor):  # unnamed where the OS allows: nothing is left behind
            pass
    except OSError as error:
        raise DataError(f"{option} {path}: cannot write in {ancestor} ({error.strerror or error}); choose a "
                        "folder you can write to") from None
    return path


def _remedy(error: OSError, what: str) -> str:
    """The fix for an ``OSError`` met checking an output path: only a too-long name is fixed by a shorter one."""
    if error.errno == errno.ENAMETOOLONG:
        return f"choose a shorter {what}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"choose a {what} in folders you can open"
    return f"choose another {what}"


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a missing folder would be made); a broken
    symbolic link exists here (a folder cannot be made in its place)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_name_fits(name: str, folder: Path, what: str, *, fix: str) -> None:
    """``DataError`` now, before any work, when the file system at ``folder`` cannot take ``name`` (a
    file or folder name the command makes up, e.g. from values given); ``what`` names it, ``fix`` says
    what to change."""
    length, limit = len(os.fsencode(name)), _name_max(folder / name)
    if length > limit:
        raise DataError(f"{what} {name[:40]}...: {length} characters, more than the {limit} the file system takes "
                        f"for a name; {fix}")


def _name_max(path: Path) -> int:
    """The longest file name the file system at ``path`` takes (255 where it does not say)."""
    try:
        return int(os.pathconf(_existing_ancestor(path.parent), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # (no pathconf on Windows)
        return 255


def check_not_folders(paths: Iterable[Path], out: str | Path, option: str = "--out") -> None:
    """``DataError`` now, before any work, when a file the command writes beside or under its output
    ``out`` (a log, a checkpoint, a report) is a folder: it failed at the end, the work done."""
    for path in paths:
        try:
            is_folder = path.is_dir()
        except OSError as error:  # a name too long for the file system, say
            raise DataError(f"{option} {out}: {path.name} beside it cannot be used ({error.strerror or error}); "
                            f"{_remedy(error, option)}") from None
        if is_folder:
            raise DataError(f"{option} {out}: {path} is a folder where this command writes a file; move it away or "
                            f"choose another {option}")


def _host_tag() -> str:
    """This host and PID namespace (containers sharing a host name have their own PIDs): where a PID
    in a temporary file's name can be asked whether it still runs."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}-{namespace}"


def _temporary_prefix(path: Path) -> str:
    """The name prefix of this process's temporary files (and staging folders) of ``path``, ending in
    ``.part``: ``.NAME.HOST.PID.`` -- what ``_remove_orphans`` looks for, which it runs first."""
    host = _host_tag()
    _remove_orphans(path, host)
    return f".{path.name}.{host}.{os.getpid()}."


def remove_orphans(path: str | Path) -> None:
    """Remove the temporary files of ``path`` that killed writers on this host left (``_remove_orphans``)."""
    _remove_orphans(Path(path), _host_tag())


def _remove_orphans(path: Path, host: str) -> None:
    """Temporary files (or staging folders) of ``path`` left by writers on this ``host`` (``_host_tag``)
    that were killed (``kill -9`` gives ``atomic_path`` no chance to clean up): their process is gone, so
    nothing will finish them."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*.part"):
        pid = orphan.name[len(f".{path.name}.{host}."):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    orphan.unlink()
        except PermissionError:  # alive, another user's
            pass
