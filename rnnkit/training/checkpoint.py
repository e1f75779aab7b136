"""Checkpoints: a directory per step, written atomically, loaded without unpickling objects.

A checkpoint is a directory ``root/step-000000123/`` holding

==================  ============================================================================
``config.json``     rnnkit and torch versions, the step, the model's class and constructor
                    arguments (``rnnkit.config.serialize(model)`` when the model is
                    :class:`~rnnkit.config.Configurable`, else ``null``) and the caller's ``extra``
``model.safetensors`` the model's ``state_dict`` (tied tensors stored once, see below)
``trainer.pt``      ``trainer_state``: optimizer, scheduler, RNG states, epoch, step, data
                    position... only tensors and plain containers, read back with
                    ``torch.load(weights_only=True)``
``manifest.json``   written last: the size and SHA-256 of every other file; a directory without
                    it, or whose files do not match it, is not a complete checkpoint
==================  ============================================================================

Writing is atomic: the files go into a hidden temporary directory inside ``root``
(``.tmp-step-...``), each file and the directory are ``fsync``-ed, and one ``rename`` puts the
directory in place. A process killed at any moment leaves either the new complete checkpoint or
none, never a half-written one under a ``step-*`` name, and the previous checkpoints are only
pruned (``keep_last``) once the new one is in place. Leftover temporary directories of a killed
run are ignored when loading and removed by the next save.

Loading (:func:`load_checkpoint`) takes a checkpoint directory or a root: from a root it picks
the newest complete ``step-*`` checkpoint (even where :func:`save` also put a model in the
root), checks every file against the manifest, and falls back to the previous good one with a
warning naming both when the newest is truncated or corrupt. Weights load into the given model,
or into a model rebuilt from ``config.json`` through :func:`rnnkit.config.deserialize` (only
registered classes are built; nothing is unpickled). A model whose parameters do not match
raises :class:`CheckpointMismatchError` naming the first differing parameter and both shapes.

Tied and non-contiguous tensors (safetensors refuses tensors that share memory): a tensor that
is exactly another tensor of the ``state_dict`` (a tied weight) is written once and recorded as
an alias in the file's metadata; a view that shares memory in another way is written as a copy;
non-contiguous tensors are made contiguous. Loading copies into the model's own parameters with
``load_state_dict``, so the model's tying survives.

:func:`save` / :func:`load` (``rnnkit.save`` / ``rnnkit.load``) keep a finished model: the same
``config.json`` + ``model.safetensors`` + ``manifest.json`` directly in a directory (the CLI's
run directory), without ``trainer.pt``.

Example:
    >>> import tempfile, torch, rnnkit
    >>> from rnnkit.training.checkpoint import save_checkpoint, load_checkpoint
    >>> root = tempfile.mkdtemp()
    >>> model = rnnkit.LSTM(3, 4)
    >>> optimizer = torch.optim.Adam(model.parameters())
    >>> path = save_checkpoint(root, model=model, step=10,
    ...                        trainer_state={"optimizer": optimizer.state_dict(), "epoch": 1})
    >>> path.name
    'step-000000010'
    >>> restored = load_checkpoint(root)        # the model is rebuilt from config.json
    >>> torch.equal(restored.model.weight_hh_l0, model.weight_hh_l0), restored.step
    (True, 10)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import socket
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import Tensor, nn

from rnnkit import _caller
from rnnkit.config import Configurable, deserialize, serialize

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "capture_rng_state",
    "list_checkpoints",
    "load",
    "load_checkpoint",
    "restore_rng_state",
    "save",
    "save_checkpoint",
]

FORMAT = "rnnkit.checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
MANIFEST_FILE = "manifest.json"
_STEP_NAME = re.compile(r"^step-(\d{9,})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
# a step's previous copy, moved aside while a new copy of the same step takes its name
_ASIDE_NAME = re.compile(r"^\.trash-(step-(\d{9,}))-[0-9a-f]{8}$")
_ALIASES_KEY = "rnnkit.aliases"
_ORDER_KEY = "rnnkit.order"


# ------------------------------------------------------------------ errors
class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be written or loaded: corrupt, truncated, not a checkpoint, or
    holding objects that ``weights_only=True`` refuses. ``ValueError`` (rnnkit's class for bad
    input) and ``RuntimeError`` (what ``torch.load`` / ``load_state_dict`` raise)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for: a missing path, a directory that is not a
    checkpoint, or a root without any complete ``step-*`` checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """The model's parameters do not match the checkpoint's (names or shapes)."""


# ------------------------------------------------------------------ result
@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        path: the checkpoint directory that was loaded.
        config: the parsed ``config.json`` (``config["model"]`` is the serialized model or
            ``None``; ``config["extra"]`` the caller's ``extra``).
        trainer_state: the ``trainer_state`` given to :func:`save_checkpoint` (tensors on
            ``map_location``), or ``None`` for a model written by :func:`save`.
        model: the model holding the checkpoint's weights (the one passed in, or rebuilt).
        step: the step the checkpoint was written at (``None`` for :func:`save`).
        extra: ``config["extra"]`` (``None`` when none was given).
    """

    path: Path
    config: dict[str, Any]
    trainer_state: dict[str, Any] | None
    model: nn.Module
    step: int | None = None
    extra: Any = field(default=None)


# ------------------------------------------------------------------ saving
def save_checkpoint(
    root: str | os.PathLike[str],
    *,
    model: nn.Module,
    trainer_state: Mapping[str, Any],
    step: int,
    keep_last: int | None = 3,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``root/step-{step:09d}/`` atomically and return its path.

    Args:
        root: the run's checkpoint directory (created when missing).
        model: the model whose ``state_dict`` is saved (a DDP or DataParallel wrapper is
            unwrapped: the names have no ``module.`` prefix); its class and
            constructor arguments go to ``config.json`` when it is ``Configurable``.
        trainer_state: everything else needed to resume, as tensors and plain Python values
            (dict, list, tuple, str, int, float, bool, None, torch.dtype/device/Size): an
            optimizer's ``state_dict()``, :func:`capture_rng_state`, counters. Anything else
            (a function, a NumPy array, a custom object) is refused here, naming where it is,
            because loading uses ``weights_only=True``.
        step: the global step, an int >= 0 (the directory's name).
        keep_last: how many complete checkpoints to keep, the new one included; older ones are
            deleted after the new one is in place. ``None`` keeps all.
        extra: JSON-serialisable data stored in ``config.json`` (e.g. the run's settings).

    Saving a step that already exists replaces it: the new copy is complete before the old one
    is moved aside, and a crash in between the two renames leaves the old copy loadable.
    """
    root = Path(root)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    step = int(step)
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise ValueError(
            f"save_checkpoint: keep_last must be an int >= 1 or None, got {keep_last!r}"
        )
    if not isinstance(trainer_state, Mapping):
        raise TypeError(
            f"save_checkpoint: trainer_state must be a dict, got {type(trainer_state).__name__}"
        )
    _check_plain(trainer_state, "trainer_state")
    config = _model_config(model, step=step, extra=extra, owner="save_checkpoint")
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    final = root / _step_name(step)
    temp = _new_temp_dir(root, final.name)
    try:
        _write_config(temp / CONFIG_FILE, config)
        _write_model(temp / MODEL_FILE, model)
        _write_trainer_state(temp / TRAINER_FILE, dict(trainer_state))
        _write_manifest(temp, [CONFIG_FILE, MODEL_FILE, TRAINER_FILE])
        _fsync_dir(temp)
        _move_into_place(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if keep_last is not None:
        _prune(root, keep_last=keep_last, newest=final)
    return final


def _step_name(step: int) -> str:
    return f"step-{step:09d}"


def _model_config(
    model: nn.Module,
    *,
    step: int | None,
    extra: Mapping[str, Any] | None,
    owner: str,
    rebuildable: bool = False,
) -> dict[str, Any]:
    """config.json's content. ``rebuildable``: the model must have a config (rnnkit.save)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    serialized, why_not = None, None
    if isinstance(model, Configurable) or callable(getattr(model, "get_config", None)):
        try:
            serialized = serialize(model)
        except (TypeError, ValueError) as error:
            # a checkpoint still saves the weights; loading needs model=... then, and says why
            why_not = str(error)
            if rebuildable:
                raise TypeError(
                    f"{owner}: the {type(model).__name__} cannot be saved for rnnkit.load: its "
                    f"config cannot be written ({why_not})"
                ) from None
            _caller.warn(
                f"{owner}: the {type(model).__name__}'s config cannot be written ({why_not}); "
                "the checkpoint holds its weights, load them with model=...", RuntimeWarning)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"{owner}: extra must be a dict, got {type(extra).__name__}")
        try:
            extra = json.loads(json.dumps(extra, allow_nan=True))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{owner}: extra must be JSON-serialisable: {error}") from None
    from rnnkit import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnnkit_version": __version__,
        "torch_version": torch.__version__,
        "step": step,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model": serialized,
        "model_config_error": why_not,
        "extra": extra,
    }


# exactly these types: torch.load(weights_only=True) refuses subclasses (np.float64, IntEnum)
_PLAIN_SCALARS = (
    type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
)
_PLAIN_MAPPINGS = (dict, OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, set, frozenset)


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse, naming where it is."""
    kind = type(value)
    if isinstance(value, Tensor):
        if kind not in (Tensor, nn.Parameter):
            raise TypeError(
                f"{where} is a {kind.__name__} (a Tensor subclass); save a plain tensor "
                "(.detach() / torch.Tensor(...)) so trainer.pt loads with weights_only=True"
            )
        return
    if kind in _PLAIN_SCALARS:
        return
    if kind in _PLAIN_MAPPINGS:
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in _PLAIN_SEQUENCES:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    hint = ""
    if isinstance(value, np.ndarray):
        hint = " (convert it with torch.from_numpy(...))"
    elif isinstance(value, np.generic):
        hint = " (convert it with .item())"
    elif hasattr(value, "state_dict"):
        hint = " (save its .state_dict() instead)"
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which trainer.pt "
        "cannot hold: it loads with torch.load(weights_only=True), so only tensors, numbers, "
        f"strings, None and dict/list/tuple/set of them can be saved{hint}"
    )


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable; a no-op where the OS cannot."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    _write_bytes(path, (json.dumps(config, indent=2, allow_nan=True) + "\n").encode())


def _tensors_for_file(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors safetensors will accept and ``{alias: name}`` for exact duplicates.

    safetensors refuses tensors that share memory: an exact duplicate (a tied weight: same
    storage, offset, shape, strides and dtype) is written once and recorded as an alias; any
    other view of shared memory is written as its own copy.
    """
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: dict[tuple, int] = {}
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"the model's state_dict entry {name!r} is a {type(value).__name__}, not a "
                "tensor (get_extra_state?); model.safetensors holds tensors only"
            )
        if value.layout != torch.strided:
            raise TypeError(
                f"the model's state_dict entry {name!r} is a {value.layout} tensor; make it "
                "dense (.to_dense()) before saving"
            )
        if value.device.type == "meta":
            raise ValueError(f"the model's state_dict entry {name!r} is on the meta device")
        identity = (
            value.device, value.untyped_storage().data_ptr(), value.storage_offset(),
            tuple(value.shape), value.stride(), value.dtype,
        )
        if value.numel() > 0 and identity in seen:
            aliases[name] = seen[identity]
            continue
        seen[identity] = name
        storage = (value.device, value.untyped_storage().data_ptr())
        storages[storage] = storages.get(storage, 0) + 1
        tensors[name] = value
    for name, value in tensors.items():
        shared = storages[(value.device, value.untyped_storage().data_ptr())] > 1
        value = value.detach().to("cpu")
        if shared or not value.is_contiguous():
            value = value.contiguous().clone() if shared else value.contiguous()
        tensors[name] = value
    return tensors, aliases


def _write_model(path: Path, model: nn.Module) -> None:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    state = model.state_dict()
    tensors, aliases = _tensors_for_file(state)
    metadata = {
        "format": "pt",
        _ALIASES_KEY: json.dumps(aliases),
        _ORDER_KEY: json.dumps(list(state)),  # safetensors sorts names; errors list them in order
    }
    _save_safetensors(tensors, str(path), metadata=metadata)
    _fsync_file(path)


def _write_trainer_state(path: Path, trainer_state: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        torch.save(trainer_state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_manifest(directory: Path, files: Iterable[str]) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {
            name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
            for name in files
        },
    }
    _write_bytes(directory / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())


def _new_temp_dir(parent: Path, name: str) -> Path:
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = parent / f"{_TEMP_PREFIX}{name}-{owner}"
    temp.mkdir()
    return temp


def _move_into_place(temp: Path, final: Path) -> None:
    """``rename(temp, final)``; an existing ``final`` (the same step saved again) is moved aside
    first and deleted once the new one is in place."""
    parent = final.parent
    trash = None
    if final.exists():
        trash = parent / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
    os.rename(temp, final)
    _fsync_dir(parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the temporary directory ``name`` belongs to a live process on this host."""
    parts = name.rsplit("-", 2)  # .tmp-<name>-<host>, pid, random
    if len(parts) != 3:
        return False
    host_part, pid_part = parts[0], parts[1]
    if not pid_part.isdigit() or not host_part.endswith("-" + socket.gethostname()):
        return False
    pid = int(pid_part)
    if pid == os.getpid():
        return False  # an earlier attempt of this very process that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(root: Path, only: str | None = None) -> None:
    """Remove the temporary and trash directories a killed run left behind (those whose names
    start with ``only`` when given)."""
    for entry in root.iterdir():
        if only is not None:
            if entry.name.startswith(only) and not _owner_alive(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(_TRASH_PREFIX):
            aside = _ASIDE_NAME.match(entry.name)
            step_dir = root / aside.group(1) if aside else None
            if (step_dir is not None and not step_dir.exists()
                    and _problem(entry, checksums=False) is None):
                # killed between moving the old copy aside and renaming the new one in: the
                # old copy is the complete one, it gets its name back
                os.rename(entry, step_dir)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(_TEMP_PREFIX) and not _owner_alive(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*`` directory, newest first (complete or not); a copy
    moved aside (``.trash-step-*``) stands in for its step while that step has no directory."""
    found: dict[str, tuple[int, Path]] = {}
    aside: list[tuple[str, int, Path]] = []
    for entry in root.iterdir():
        if not entry.is_dir():
            continue
        match = _STEP_NAME.match(entry.name)
        if match:
            found[entry.name] = (int(match.group(1)), entry)
            continue
        match = _ASIDE_NAME.match(entry.name)
        if match:
            aside.append((match.group(1), int(match.group(2)), entry))
    for name, step, entry in aside:
        if name not in found and _problem(entry, checksums=False) is None:
            found[name] = (step, entry)
    return sorted(found.values(), key=lambda item: item[0], reverse=True)


def _prune(root: Path, *, keep_last: int, newest: Path) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (``newest`` always among them);
    delete older complete ones and incomplete ``step-*`` directories older than ``newest``."""
    newest_step = int(_STEP_NAME.match(newest.name).group(1))
    kept = 0
    for step, path in _step_dirs(root):
        complete = path == newest or _problem(path, checksums=False) is None
        if step > newest_step:
            kept += complete
            continue
        if complete and (path == newest or kept < keep_last):
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ checking
def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _problem(directory: Path, *, checksums: bool) -> str | None:
    """Why ``directory`` is not a complete checkpoint (``None`` when it is)."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"no {MANIFEST_FILE} (not written completely)"
    try:
        manifest = _read_json(manifest_path)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict) or not files:
            raise ValueError("not an rnnkit checkpoint manifest")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({_one_line(error)})"
    for name, expected in files.items():
        if not isinstance(expected, dict) or Path(name).name != name or name == MANIFEST_FILE:
            return f"{MANIFEST_FILE} is malformed (entry {name!r})"
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the manifest says {expected.get('size')} (truncated?)"
        if checksums and _sha256(path) != expected.get("sha256"):
            return f"{name}'s SHA-256 does not match the manifest (corrupt)"
    return None


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints under ``root``, newest first (``[]`` when there are none or
    ``root`` does not exist). Complete: the manifest is there and every file has its size;
    checksums are verified when loading."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [path for _, path in _step_dirs(root) if _problem(path, checksums=False) is None]


# ------------------------------------------------------------------ loading
def load_checkpoint(
    path_or_root: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Load a checkpoint directory, or the newest complete checkpoint under a root.

    Args:
        path_or_root: a checkpoint directory (``root/step-000000123``, or a directory written by
            :func:`save`) or a root holding ``step-*`` checkpoints.
        model: the model to load the weights into (the names and shapes must match, else
            :class:`CheckpointMismatchError` names the first difference). ``None`` rebuilds it
            from ``config.json`` (a ``Configurable`` model: every rnnkit cell, layer and task
            model, or a class registered with ``rnnkit.register_serializable``).
        map_location: the device of the trainer state's tensors, and of a rebuilt model.

    From a root, a checkpoint whose files are truncated or corrupt is skipped with a warning
    naming it and the one loaded instead. ``trainer.pt`` is read with ``weights_only=True``:
    a file that holds other objects is refused. Returns a :class:`Checkpoint`.
    """
    path = _existing_dir(path_or_root, "load_checkpoint")
    candidates = _step_dirs(path)
    if _STEP_NAME.match(path.name) or ((path / MANIFEST_FILE).exists() and not candidates):
        return _load_named(path, model, map_location, "load_checkpoint")
    if not candidates:
        leftovers = [entry.name for entry in path.iterdir() if entry.name.startswith(_TEMP_PREFIX)]
        detail = (
            f" (only {len(leftovers)} unfinished temporary director"
            f"{'y' if len(leftovers) == 1 else 'ies'} of an interrupted save)"
            if leftovers else ""
        )
        raise CheckpointNotFoundError(
            f"load_checkpoint: {path} is not a checkpoint: it has no {MANIFEST_FILE} and no "
            f"step-* checkpoint directories{detail}"
        )
    skipped: list[tuple[Path, str]] = []
    for _, candidate in candidates:
        problem = _problem(candidate, checksums=True)
        if problem is None:
            try:
                loaded = _load_one(candidate, model, map_location)
            except _CorruptFile as error:
                problem = _one_line(error)
            else:
                for bad, why in skipped:
                    _caller.warn(
                        f"checkpoint {bad} is unusable ({why}); loaded the previous good "
                        f"checkpoint {candidate} instead",
                        RuntimeWarning,
                    )
                return loaded
        skipped.append((candidate, problem))
    listing = "; ".join(f"{bad.name}: {why}" for bad, why in skipped)
    raise CheckpointError(f"load_checkpoint: no usable checkpoint in {path} ({listing})")


class _CorruptFile(Exception):
    """A file that matches its manifest but still cannot be parsed (written corrupt)."""


def _one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def _existing_dir(path_or_root: str | os.PathLike[str], owner: str) -> Path:
    path = Path(path_or_root)
    if not path.exists():
        raise CheckpointNotFoundError(f"{owner}: {path} does not exist")
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"{owner}: {path} is a file; pass the checkpoint directory (or its root)"
        )
    return path


def _load_named(directory: Path, model: nn.Module | None, map_location: Any, owner: str
                ) -> Checkpoint:
    """Load exactly ``directory``: a problem is an error, there is nothing to fall back to."""
    problem = _problem(directory, checksums=True)
    if problem is None:
        try:
            return _load_one(directory, model, map_location)
        except _CorruptFile as error:
            problem = _one_line(error)
    raise CheckpointError(f"{owner}: {directory} is not a usable checkpoint: {problem}")


def _load_one(directory: Path, model: nn.Module | None, map_location: Any) -> Checkpoint:
    try:
        config = _read_json(directory / CONFIG_FILE)
    except (OSError, ValueError) as error:
        raise _CorruptFile(f"{CONFIG_FILE} is unreadable ({_one_line(error)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise _CorruptFile(f"{CONFIG_FILE} is not an rnnkit checkpoint config")
    try:
        tensors = _read_model_file(directory / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as error:
        raise _CorruptFile(f"{MODEL_FILE} is unreadable ({_one_line(error)})") from None
    trainer_state = None
    if (directory / TRAINER_FILE).exists():
        trainer_state = _read_trainer_state(directory / TRAINER_FILE, map_location)
    if model is None:
        model = _rebuild(config, directory)
        _load_weights(model, tensors, directory)
        if isinstance(map_location, (str, torch.device)):
            model = model.to(map_location)
    else:
        target = model.module if isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
        _load_weights(target, tensors, directory)
    return Checkpoint(
        path=directory,
        config=config,
        trainer_state=trainer_state,
        model=model,
        step=config.get("step"),
        extra=config.get("extra"),
    )


def _read_model_file(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = _load_safetensors(str(path))
    aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    for alias, name in aliases.items():
        if name not in tensors:
            raise ValueError(f"alias {alias!r} names {name!r}, which the file does not hold")
        tensors[alias] = tensors[name]
    order = json.loads(metadata.get(_ORDER_KEY, "[]"))
    if sorted(order) == sorted(tensors):
        tensors = {name: tensors[name] for name in order}
    return tensors


def _read_trainer_state(path: Path, map_location: Any) -> dict[str, Any]:
    import pickle

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a page of advice; the line that names the object is the one to keep
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" (it needs {found.group(1)})" if found else ""
        raise CheckpointError(
            f"load_checkpoint: refusing {path}: it holds objects other than tensors and plain "
            f"containers{what}, and checkpoints load with weights_only=True"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise _CorruptFile(f"{TRAINER_FILE} is unreadable ({_one_line(error)})") from None
    if not isinstance(state, dict):
        raise _CorruptFile(f"{TRAINER_FILE} holds a {type(state).__name__}, not a dict")
    return state


def _rebuild(config: dict[str, Any], directory: Path) -> nn.Module:
    serialized = config.get("model")
    if serialized is None:
        why = config.get("model_config_error") or "it is not an rnnkit.config.Configurable"
        raise CheckpointError(
            f"load_checkpoint: {directory} was saved from a {config.get('model_class')} without "
            f"a config ({why}), so it cannot be rebuilt; pass model=... to load the weights "
            "into a model you build"
        )
    try:
        model = deserialize(serialized)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"load_checkpoint: cannot rebuild the model of {directory} from {CONFIG_FILE}: "
            f"{_one_line(error)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"load_checkpoint: {directory}/{CONFIG_FILE} describes a {type(model).__name__}, "
            "not a model"
        )
    return model


def _load_weights(model: nn.Module, tensors: dict[str, Tensor], directory: Path) -> None:
    expected = model.state_dict()
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    for name, value in expected.items():
        if name in tensors and isinstance(value, Tensor) and value.shape != tensors[name].shape:
            raise CheckpointMismatchError(
                f"checkpoint {directory} does not match the model: parameter {name!r} has shape "
                f"{tuple(tensors[name].shape)} in the checkpoint and {tuple(value.shape)} in the "
                f"{type(model).__name__}" + _names_note(missing, unexpected)
            )
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"checkpoint {directory} does not match the {type(model).__name__}:"
            + _names_note(missing, unexpected).removeprefix(";")
        )
    model.load_state_dict(tensors, strict=True)


def _names_note(missing: list[str], unexpected: list[str], shown: int = 5) -> str:
    def names(items: list[str]) -> str:
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(repr(item) for item in items[:shown]) + more

    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {names(missing)}")
    if unexpected:
        parts.append(f"in the checkpoint but not the model: {names(unexpected)}")
    return "".join(f"; {part}" for part in parts)


# ------------------------------------------------------------------ finished models
def save(
    model: nn.Module, directory: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a finished model into ``directory``: ``config.json``, ``model.safetensors`` and
    ``manifest.json`` (no trainer state). :func:`load` rebuilds it.

    A new directory is written atomically (temporary directory + rename). An existing one (a
    run directory holding logs and ``step-*`` checkpoints) gets its files replaced one by one,
    each atomically, with the manifest removed first and written last, so a crash in between
    leaves an incomplete model that :func:`load` refuses rather than mixed files.
    """
    directory = Path(directory)
    config = _model_config(model, step=None, extra=extra, owner="rnnkit.save", rebuildable=True)
    if config["model"] is None:
        raise TypeError(
            f"rnnkit.save: rnnkit.load rebuilds a model from its config, and a "
            f"{type(model).__name__} has none: derive it from rnnkit.config.Configurable and "
            "register it with rnnkit.register_serializable (rnnkit's layers and task models "
            "are), or keep its weights with save_checkpoint / torch.save(model.state_dict())"
        )
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(directory.parent, only=f"{_TEMP_PREFIX}{directory.name}-")
        temp = _new_temp_dir(directory.parent, directory.name)
        try:
            _write_config(temp / CONFIG_FILE, config)
            _write_model(temp / MODEL_FILE, model)
            _write_manifest(temp, [CONFIG_FILE, MODEL_FILE])
            _fsync_dir(temp)
            os.rename(temp, directory)
            _fsync_dir(directory.parent)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return directory
    if not directory.is_dir():
        raise FileExistsError(f"rnnkit.save: {directory} exists and is not a directory")
    _clean_leftovers(directory)
    temp = _new_temp_dir(directory, "model")
    try:
        _write_config(temp / CONFIG_FILE, config)
        _write_model(temp / MODEL_FILE, model)
        _write_manifest(temp, [CONFIG_FILE, MODEL_FILE])
        (directory / MANIFEST_FILE).unlink(missing_ok=True)
        _fsync_dir(directory)
        for name in (CONFIG_FILE, MODEL_FILE, MANIFEST_FILE):
            os.replace(temp / name, directory / name)
        _fsync_dir(directory)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return directory


def load(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """The model saved by :func:`save` in ``directory``, or the one of the newest complete
    ``step-*`` checkpoint when ``directory`` is a run directory without a saved model; rebuilt
    from ``config.json`` and returned in eval mode (``.train()`` to fine-tune)."""
    directory = _existing_dir(directory, "rnnkit.load")
    if (directory / MANIFEST_FILE).exists():  # a saved model wins over the run's step-* ones
        return _load_named(directory, None, map_location, "rnnkit.load").model.eval()
    return load_checkpoint(directory, map_location=map_location).model.eval()


# ------------------------------------------------------------------ RNG states
def capture_rng_state() -> dict[str, Any]:
    """Every global random state that training draws from, as tensors and plain values (so it
    is saved in ``trainer.pt`` and loads with ``weights_only=True``): Python's ``random``,
    NumPy's global generator, torch's CPU generator and, when CUDA is available, every CUDA
    device's generator. :func:`restore_rng_state` puts them back: the next draws are equal."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),  # 624 words + position
            "gauss_next": gauss_next,
        },
        "torch": torch.get_rng_state(),
    }
    numpy_state = np.random.get_state(legacy=False)
    state["numpy"] = _numpy_state_to_plain(numpy_state)
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _numpy_state_to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # uint32 words as int64: weights_only loads any tensor, torch's uint32 is young
        return torch.from_numpy(value.astype(np.int64))
    if isinstance(value, dict):
        return {key: _numpy_state_to_plain(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned. A state captured with CUDA and
    restored where there is none (or fewer devices) restores the rest and warns."""
    if not isinstance(state, Mapping) or not {"python", "numpy", "torch"} <= set(state):
        raise ValueError(
            "restore_rng_state: expected the dict capture_rng_state() returned (keys python, "
            "numpy, torch), got "
            + (f"keys {sorted(state)}" if isinstance(state, Mapping) else type(state).__name__)
        )
    python = state["python"]
    random.setstate((
        int(python["version"]),
        tuple(int(word) for word in python["state"].tolist()),
        python["gauss_next"],
    ))
    numpy_state = dict(state["numpy"])
    if numpy_state.get("bit_generator") != "MT19937":
        raise ValueError(
            "restore_rng_state: NumPy's global generator state is not MT19937 "
            f"({numpy_state.get('bit_generator')!r})"
        )
    inner = numpy_state["state"]
    np.random.set_state((
        "MT19937",
        # .cpu(): a checkpoint loaded with map_location="cuda" brings these words along
        inner["key"].cpu().numpy().astype(np.uint32),
        int(inner["pos"]),
        int(numpy_state["has_gauss"]),
        float(numpy_state["gauss"]),
    ))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            _caller.warn(
                "restore_rng_state: the state has CUDA generators but CUDA is not available "
                "here; the CPU, Python and NumPy generators were restored", RuntimeWarning)
        elif torch.cuda.device_count() != len(cuda):
            _caller.warn(
                f"restore_rng_state: the state has {len(cuda)} CUDA generator(s), this machine "
                f"has {torch.cuda.device_count()} device(s); restored the first "
                f"{min(len(cuda), torch.cuda.device_count())}", RuntimeWarning)
            for index in range(min(len(cuda), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda[index].cpu(), index)
        else:
            torch.cuda.set_rng_state_all([item.cpu() for item in cuda])
