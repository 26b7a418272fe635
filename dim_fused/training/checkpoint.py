"""Run-folder files that must survive crashes: every file is written to a temporary
file, flushed, then renamed over the old one, so readers see the old file or the new
one, never a torn one."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, flushed to disk, then
    renamed over ``path``: readers see the old file or the new one, never a torn one,
    and a failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_atomically(obj: Any, path: Path) -> None:
    write_atomically(path, lambda f: torch.save(obj, f))


def write_text_atomically(text: str, path: Path) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
