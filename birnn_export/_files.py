"""Writing files so that a failure never leaves a partial one, and hashing them."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from birnn_export.errors import BiRNNExportError, ExportError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is
    removed. The temporary name keeps the suffix (numpy and onnx look at it).

    A symlink is written through: the file it points to is replaced (on its own filesystem), the
    link stays. The file gets the permissions a new file gets here (``0666`` less the umask),
    like every other file the tool writes.
    """
    target = _regular_target(Path(path))
    try:
        handle, temp = tempfile.mkstemp(
            prefix=f".{target.stem[:40]}.", suffix=target.suffix[:16], dir=target.parent
        )
    except OSError as exc:
        raise BiRNNExportError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~_umask())
        yield Path(temp)
        os.replace(temp, target)
    except OSError as exc:
        raise BiRNNExportError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _regular_target(path: Path) -> Path:
    """The file ``path`` names, its links followed: one that is there must be a regular file
    (written through a link to a device or a pipe, the node itself was replaced)."""
    target = path.resolve()
    if target.exists() and not target.is_file():
        through = f"a link to {target}, which is " if path.is_symlink() else ""
        raise BiRNNExportError(
            f"{path}: {through}not a regular file (a device, a pipe or a folder); give a "
            "file's path"
        )
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (text as UTF-8)."""
    with atomic_path(path) as temp:
        temp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def check_output_path(
    option: str, path: str | os.PathLike[str] | None, *, suffix: str | None = None
) -> None:
    """Fail early, in one line, when ``path`` cannot be written as a file.

    Raises:
        BiRNNExportError: ``path`` is a directory, its folder is missing or not writable, its
            name is longer than the filesystem allows, or it does not end in ``suffix``.
    """
    if path is None:
        return
    if not os.fspath(path):  # Path("") is "." (review41 F7: "-o: . is a directory")
        raise BiRNNExportError(f"{option}: an empty path; give a file name")
    target = Path(path)
    folder = target.absolute().parent
    _check_name_length(option, target, folder)
    if target.is_dir():
        raise BiRNNExportError(f"{option}: {target} is a directory; give a file name")
    try:
        _regular_target(target)
    except BiRNNExportError as exc:
        raise BiRNNExportError(f"{option}: {exc}") from None
    if suffix is not None and target.suffix.lower() != suffix:
        raise BiRNNExportError(f"{option}: {target.name} must end in {suffix}")
    if not folder.is_dir():
        raise BiRNNExportError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise BiRNNExportError(f"{option}: folder {folder} is not writable")


def _check_name_length(option: str, target: Path, folder: Path) -> None:
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    # Room for the hidden staging names built from it (".NAME.birnn-export-PID-XXXXXXXX").
    if len(os.fsencode(target.name)) + 40 > longest:
        raise BiRNNExportError(
            f"{option}: the name is {len(os.fsencode(target.name))} bytes long; this filesystem "
            f"allows {longest} (and birnn-export needs 40 of them for its temporary files): "
            "choose a shorter name"
        )


def refuse_same_files(**paths: str | os.PathLike[str] | None) -> None:
    """Refuse, in one line, before any work, when two of ``paths`` (option name -> path) are
    the same file: an output over an input, or two outputs over each other.

    Raises:
        BiRNNExportError: naming both options.
    """
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        name = option.replace("_", "-")
        if resolved in seen:
            raise BiRNNExportError(
                f"{name}: {path} is also the {seen[resolved]}; give each its own file"
            )
        seen[resolved] = name


def size_text(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit under which it is at least 1 (``360.9 MiB``)."""
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def is_torch_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds what ``torch.save`` writes (a zip archive with a ``data.pkl``) or
    a pickle (torch's legacy format, ``pickle.dump``): told from its first bytes, whatever its
    name."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(2, 6)}:
            return True  # pickle protocol 2-5's opening PROTO opcode
        if head == b"PK" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        pass
    return False


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Staging folders are named ``.<file>.birnn-export-<pid>-<random>``: a folder whose process is
#: gone (killed while saving) is removed by the next export to the same file.
STAGING_MARK = ".birnn-export-"
#: The file in a staging folder its export holds locked (``flock``) while it runs: the lock
#: ends with the process, on this machine or another (a container, a host sharing the folder),
#: where its process id means nothing.
STAGING_LOCK = ".lock"

#: How the hidden copy verification's layer probe may put beside a graph begins
#: (:class:`birnn_export._layers.GraphLayers`): a staging folder may hold one.
LAYER_PROBE_MARK = ".birnn-export-layers-"

#: Errors that say the output's filesystem takes no more (full, over quota, read-only).
_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextlib.contextmanager
def staged_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it (and external data) into place on success.
    A symlink is written through, as :func:`atomic_path` does: the file it points to is
    replaced, the link stays."""
    path = _regular_target(path) if path.is_symlink() else path
    _remove_stale_staging(path)
    try:
        directory = Path(
            tempfile.mkdtemp(prefix=f".{path.name}{STAGING_MARK}{os.getpid()}-", dir=path.parent)
        )
    except OSError as exc:
        raise ExportError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    try:
        lock = _locked(directory / STAGING_LOCK)
    except OSError as exc:
        directory.rmdir()
        raise ExportError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    staging = directory / path.name
    try:
        yield staging
        data = directory / (path.name + ".data")
        if data.exists():
            os.replace(data, path.parent / data.name)
        os.replace(staging, path)
    except OSError as exc:
        if exc.errno not in _CANNOT_WRITE:
            raise
        raise ExportError(
            f"{path}: cannot write it ({exc.strerror or exc}); nothing was written"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):  # unlocked last: no one removes it before
            for leftover in directory.iterdir():
                leftover.unlink()
            directory.rmdir()
        lock.close()


def _locked(path: Path) -> Any:
    """``path`` created and held locked (``flock``, where the platform and filesystem have it)
    until closed."""
    handle = open(path, "w")  # noqa: SIM115 - held open for the export's whole run
    with contextlib.suppress(ImportError, OSError):
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: no one holds it
    return handle


def _in_use(folder: Path, pid: int) -> bool:
    """Whether another export writes with ``folder`` now: its lock is held (a folder from before
    the lock, not locked yet, or on a filesystem without locks: its process runs, here). A lock
    that is no plain file (a link or a pipe planted in a downloaded folder) is not opened."""
    lock = folder / STAGING_LOCK
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        return False  # not ours: the folder is left (_ours)
    try:
        import fcntl

        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
    except BlockingIOError:
        return True
    except (ImportError, OSError):
        return _alive(pid)


def _remove_stale_staging(path: Path) -> None:
    """Remove staging folders for ``path`` left by a process that no longer runs (kill -9).

    Only a real folder (not a link to one: a downloaded folder may hold a link named like a
    staging folder, and the files it pointed to were removed) holding no more than the files
    the export writes there (:func:`_ours`) is removed.

    Raises:
        ExportError: another export is writing ``path`` now (two writers of one file: the last
            one's graph stayed, and the other described it as its own).
    """
    prefix = f".{path.name}{STAGING_MARK}"
    ours = {f"{kind}{path.name}{data}" for kind in ("", "float32-") for data in ("", ".data")}
    ours.add(STAGING_LOCK)
    for folder in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix) :].partition("-")[0]
        if folder.is_symlink() or not folder.is_dir() or not pid.isdigit():
            continue
        if _in_use(folder, int(pid)):
            raise ExportError(
                f"{path}: another birnn-export is writing it now (process {pid}, staging in "
                f"{folder.name}); wait for it to finish, or write elsewhere with -o"
            )
        with contextlib.suppress(OSError):
            leftovers = list(folder.iterdir())
            if any(not _ours(f, ours) or not f.is_file() or f.is_symlink() for f in leftovers):
                continue
            for leftover in leftovers:
                leftover.unlink()
            folder.rmdir()
            logger.info("removed %s, left by process %s that no longer runs", folder, pid)


def _ours(file: Path, names: set[str]) -> bool:
    """Whether ``file`` in a staging folder is one the export writes there: the graph and its
    data (the float32 graph int8 quantization starts from, too), or the copy verification's
    layer probe puts beside them."""
    probe = file.name.startswith(LAYER_PROBE_MARK) and file.name.endswith(".onnx")
    return file.name in names or probe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True


def save_onnx(proto: Any, path: Path, *, external: bool) -> None:
    import onnx

    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )


def onnx_file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
