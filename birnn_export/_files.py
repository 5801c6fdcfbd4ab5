"""Writing files so that a failure never leaves a partial one, and hashing them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from birnn_export.errors import BiRNNExportError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is
    removed. The temporary name keeps the suffix (numpy and onnx look at it)."""
    target = Path(path)
    try:
        handle, temp = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=target.suffix, dir=target.resolve().parent
        )
    except OSError as exc:
        raise BiRNNExportError(f"{target}: cannot write there ({exc.strerror or exc})") from None
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (text as UTF-8)."""
    with atomic_path(path) as temp:
        temp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def check_output_path(option: str, path: str | os.PathLike[str] | None) -> None:
    """Fail early, in one line, when ``path`` cannot be written as a file.

    Raises:
        BiRNNExportError: ``path`` is a directory, or its folder is missing or not writable.
    """
    if path is None:
        return
    target = Path(path)
    folder = target.absolute().parent
    if target.is_dir():
        raise BiRNNExportError(f"{option}: {target} is a directory; give a file name")
    if not folder.is_dir():
        raise BiRNNExportError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise BiRNNExportError(f"{option}: folder {folder} is not writable")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
