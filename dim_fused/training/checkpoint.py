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


class CheckpointError(ValueError):
    """A file that is not a readable dim_fused training checkpoint."""


CHECKPOINT_KEYS = ("format", "config", "step", "model", "encoder_optimizer", "prior_optimizer", "generators")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, unpickled with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a crafted file cannot run code. Anything that is not
    a complete checkpoint (empty, truncated, foreign, wrong keys) raises CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every way a file can fail to load is the same answer
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise CheckpointError(
            f"{path} is not a dim_fused training checkpoint: it does not load ({type(error).__name__}: {reason})"
        ) from error
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a dim_fused training checkpoint: it lacks {', '.join(missing)}")
    return state


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder (``OUT/.lock``, flock): a second training run on
    the same folder fails at once instead of deleting the first one's temporary files or
    truncating its metrics. Released when the process ends, however it ends."""

    def __init__(self, folder: Path) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the process's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunFolderBusy(f"{folder} is in use by another training run ({holder})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()
