"""Run-folder files that must survive crashes: every file is written to a temporary
file, flushed, then renamed over the old one, so readers see the old file or the new
one, never a torn one. Nothing here writes through a symbolic link: a link planted in a
run folder (``R/.lock -> ~/victim``) is refused or replaced, never followed."""

import dataclasses
import errno
import os
import stat
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .config import DIMConfig, TrainConfig
from .models import build_model

# Opening flags for the files this module creates: never through a link, never inherited.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A run-folder path that is a symbolic link or not a regular file, where writing
    through it could clobber another file."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, flushed to disk, then
    renamed over ``path``: readers see the old file or the new one, never a torn one,
    and a failed write leaves no temporary file. The rename replaces a symbolic link at
    ``path`` itself, and the temporary file is created afresh (O_EXCL, O_NOFOLLOW), so no
    write ever goes through a link."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, _NEW_FILE, 0o644)
    except FileExistsError:  # a killed save of a process with this pid, or a planted link: remove the entry itself
        tmp.unlink()
        fd = os.open(tmp, _NEW_FILE, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_atomically(obj: Any, path: Path) -> None:
    def write(f: BinaryIO) -> None:
        stream = _RecordingWriter(f)
        try:
            torch.save(obj, stream)
        except RuntimeError as error:
            # torch.save's zip writer turns whatever its writes raise (ENOSPC on a full disk, a
            # KeyboardInterrupt from a second Ctrl-C) into RuntimeError ("unexpected pos"):
            # re-raise what really happened, so a full disk reads as the OSError it is.
            if stream.error is not None:
                raise stream.error from error
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "write failed"
            if "unexpected pos" in reason or "write" in reason:
                raise OSError(errno.EIO, f"writing {path.name} failed, is the disk full? ({reason})") from error
            raise

    write_atomically(path, write)


class _RecordingWriter:
    """A binary file whose ``write`` remembers the exception it raised."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except BaseException as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def write_text_atomically(text: str, path: Path) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def append_text(text: str, path: Path) -> None:
    """Append ``text`` to ``path`` (created if missing), never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "ab") as f:
        f.write(text.encode())


def remove(path: Path) -> None:
    """Unlink ``path`` (a link itself, not its target) if it exists, durably."""
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    """A file that is not a readable dim_fused training checkpoint."""


FORMAT = 1  # the checkpoint layout this version writes and reads
CHECKPOINT_KEYS = ("format", "config", "step", "model", "encoder_optimizer", "prior_optimizer", "generators")
_CUDA_GENERATOR_STATE_BYTES = 16  # Philox: a 64-bit seed and a 64-bit offset


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, unpickled with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a crafted file cannot run code. Anything that is not
    a complete, consistent checkpoint (not a regular file, empty, truncated, foreign,
    wrong keys, wrong content: see ``validate_checkpoint``) raises CheckpointError."""
    try:
        # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror}") from error
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path} is not a regular file (a FIFO, device or folder): not a checkpoint")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - every way a file can fail to load is the same answer
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
            raise CheckpointError(
                f"{path} is not a dim_fused training checkpoint: it does not load ({type(error).__name__}: {reason})"
            ) from error
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a dim_fused training checkpoint: it lacks {', '.join(missing)}")
    validate_checkpoint(state, path)
    return state


def validate_checkpoint(state: dict[str, Any], path: Path | str = "the checkpoint") -> TrainConfig:
    """The run's TrainConfig, once every part of ``state`` is checked against it: the
    format, the config's fields and types, the step, the model's keys, shapes and
    finiteness, both optimizers' states, the generators and the metrics windows. Else
    CheckpointError naming the part that is wrong (train --resume and evaluate both use
    this, so a bad file fails before any work with a message, never a traceback)."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable dim_fused training checkpoint: {what}")

    if type(state.get("format")) is not int or state["format"] != FORMAT:
        raise bad(f"format is {state.get('format')!r}; this version reads format {FORMAT}")
    saved = state["config"]
    if not isinstance(saved, dict) or not isinstance(saved.get("model", {}), dict):
        raise bad("config is not a dict of the run's settings (with model a dict of the model's)")
    try:
        _check_field_types(TrainConfig, saved, "config.")
        _check_field_types(DIMConfig, saved.get("model", {}), "config.model.")
        config = TrainConfig(**saved)
    except (TypeError, ValueError) as error:
        raise bad(f"config: {error}") from error
    step = state["step"]
    if type(step) is not int or not 0 <= step <= config.steps:
        raise bad(f"step is {step!r}; it must be a whole number from 0 to the run's steps ({config.steps})")

    model = build_model(config.model, config.seed)
    _check_tensors("model", state["model"], model.state_dict(), bad)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError) as error:
        raise bad(f"model does not load into the config's model: {error}") from error
    optimizers = [("encoder_optimizer", model.encoder_parameters())]
    if model.prior is not None:
        optimizers.append(("prior_optimizer", model.prior_parameters()))
    elif state["prior_optimizer"] is not None:
        raise bad("prior_optimizer is set, but the config's model has no prior discriminator (gamma 0)")
    for name, parameters in optimizers:
        _check_optimizer(name, state[name], torch.optim.Adam(parameters, lr=config.lr, betas=config.betas), bad)

    generators = state["generators"]
    local = generators.get("local") if isinstance(generators, dict) else None
    if not isinstance(local, list) or not local:
        raise bad("generators must be {'shared': a generator state, 'local': [one per process]}")
    for name, value in [("shared", generators.get("shared")), *((f"local[{i}]", v) for i, v in enumerate(local))]:
        if not _is_generator_state(value):
            raise bad(f"generators: {name} is not a random generator's state (a uint8 tensor a generator accepts)")
    world = state.get("world_size", len(local))
    if type(world) is not int or world != len(local):
        raise bad(f"world_size is {world!r}, but the generators are of {len(local)} process(es)")
    windows = state.get("metrics_windows")
    if windows is not None and not (
        isinstance(windows, list) and len(windows) == len(local) and all(_is_window(w) for w in windows)
    ):
        raise bad(
            f"metrics_windows must be one {{'steps': a whole number >= 0, 'sums': {{name: one-number tensor}}}} "
            f"per process ({len(local)})"
        )
    return config


def _check_field_types(cls: type, values: dict[str, Any], prefix: str) -> None:
    """TypeError naming the first field of ``values`` whose type is not ``cls``'s (a step
    count given as a string, a flag as a number): the dataclass itself checks ranges."""
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value, expected = values[field.name], field.type
        if typing.get_origin(expected) is tuple:
            ok = isinstance(value, list | tuple) and all(type(v) in (int, float) for v in value)
        elif expected is bool:
            ok = type(value) is bool
        elif expected is int:
            ok = type(value) is int
        elif expected is float:
            ok = type(value) in (int, float)
        elif expected is str:
            ok = type(value) is str
        else:
            continue
        if not ok:
            name = getattr(expected, "__name__", str(expected))
            raise TypeError(f"{prefix}{field.name} is {value!r}, not of type {name}")


def _check_tensors(
    name: str, saved: Any, expected: dict[str, torch.Tensor], bad: Callable[[str], CheckpointError]
) -> None:
    """Same keys, tensors of the same shapes, finite floating-point values."""
    if not isinstance(saved, dict):
        raise bad(f"{name} is a {type(saved).__name__}, not a dict of tensors")
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing or unexpected:
        parts = [f"lacks {', '.join(map(repr, missing[:3]))}" if missing else ""]
        parts += [f"has unknown {', '.join(map(repr, unexpected[:3]))}" if unexpected else ""]
        raise bad(f"{name} does not fit the config's model: it {' and '.join(p for p in parts if p)}")
    for key, want in expected.items():
        have = saved[key]
        if not isinstance(have, torch.Tensor):
            raise bad(f"{name}[{key!r}] is a {type(have).__name__}, not a tensor")
        if have.shape != want.shape:
            raise bad(
                f"{name}[{key!r}] has shape {tuple(have.shape)}, the config's model needs {tuple(want.shape)} "
                "(a config whose sizes, e.g. units, do not match the weights)"
            )
        if have.is_floating_point() and not bool(torch.isfinite(have).all()):
            raise bad(f"{name}[{key!r}] is not finite (NaN or inf): the saved run had diverged")


def _check_optimizer(
    name: str, saved: Any, optimizer: torch.optim.Optimizer, bad: Callable[[str], CheckpointError]
) -> None:
    """``saved`` loads into ``optimizer`` (a fresh one over the config's model), and its
    moments have their parameters' shapes and are finite."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict) and saved.get("param_groups")):
        raise bad(f"{name} is not an optimizer state (a dict of 'state' and non-empty 'param_groups')")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as error:
        raise bad(f"{name} does not fit the config's model: {error}") from error
    for parameter, entry in optimizer.state.items():
        if not isinstance(parameter, torch.Tensor) or not isinstance(entry, dict):
            raise bad(f"{name} holds state for {parameter!r}, a parameter its param_groups do not list")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.dim() > 0 and value.shape != parameter.shape:
                shapes = f"{tuple(value.shape)}, its parameter's {tuple(parameter.shape)}"
                raise bad(f"{name}: its {key} has shape {shapes}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise bad(f"{name}: its {key} is not finite (NaN or inf)")


def _is_generator_state(value: Any) -> bool:
    """A CPU generator's state (it must load into one), or a CUDA one's (16 bytes; only a
    CUDA generator can check it, at resume on a GPU)."""
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
        return False
    if value.numel() == _CUDA_GENERATOR_STATE_BYTES:
        return True
    try:
        torch.Generator().set_state(value)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _is_window(window: Any) -> bool:
    return (
        isinstance(window, dict)
        and type(window.get("steps")) is int
        and window["steps"] >= 0
        and isinstance(window.get("sums"), dict)
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.numel() == 1 for k, v in window["sums"].items()
        )
    )


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder (``OUT/.lock``, flock): a second training run on
    the same folder fails at once instead of deleting the first one's temporary files or
    truncating its metrics. Released when the process ends, however it ends. The lock
    file is opened without following links and without truncation, and written only once
    held: a link or a hard link planted at ``OUT/.lock`` is refused (UnsafePath), never
    written through."""

    def __init__(self, folder: Path) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafePath(f"{self.path} is a symbolic link: remove it (a run's lock is a plain file)") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            raise UnsafePath(f"{self.path} is not a plain file of its own (a FIFO, device or hard link): remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"{folder} is in use by another training run ({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
