"""Checkpoints: round trips, atomicity, fallback on corruption, keep_last, weights_only, errors.

Oracles are independent of the code under test: the original model's tensors and outputs, an
optimizer stepped without any save in between, the draws the generators make without a save,
hashlib for the manifest, and pickle's own behaviour for the refused file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import rnnkit
from rnnkit.config import Configurable
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


@rnnkit.register_serializable(name="tests.TiedTagger")
class TiedTagger(Configurable, nn.Module):
    """A Configurable model with a tied embedding/output weight and a non-contiguous buffer."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.recurrence = rnnkit.Recurrence(rnnkit.GRUCell(hidden, hidden), batch_first=True)
        self.output = nn.Linear(hidden, vocab)
        self.output.weight = self.embedding.weight  # tied: one tensor, two names
        self.register_buffer("scale", torch.arange(2.0 * vocab).reshape(2, vocab).t())  # (V, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.recurrence(self.embedding(ids))  # (B, T, H)
        return self.output(hidden) * self.scale[:, 0]  # (B, T, V)


class PlainNet(nn.Module):
    """Not Configurable: its weights save, but it cannot be rebuilt from config.json."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def assert_same_state(actual: nn.Module, expected: nn.Module) -> None:
    actual_state, expected_state = actual.state_dict(), expected.state_dict()
    assert list(actual_state) == list(expected_state)
    for name, value in expected_state.items():
        assert actual_state[name].dtype == value.dtype, name
        assert torch.equal(actual_state[name], value), name


def test_lstm_round_trip_is_bit_exact(tmp_path):
    model = randomised(rnnkit.LSTM(3, 5, num_layers=2, batch_first=True))
    path = save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 1}, step=123)
    assert path == tmp_path / "step-000000123"
    assert sorted(os.listdir(path)) == [
        "config.json", "manifest.json", "model.safetensors", "trainer.pt"
    ]

    loaded = load_checkpoint(tmp_path)  # rebuilt from config.json
    assert loaded.path == path and loaded.step == 123 and loaded.trainer_state == {"epoch": 1}
    assert type(loaded.model) is rnnkit.LSTM
    assert loaded.model.get_config() == model.get_config()
    assert_same_state(loaded.model, model)
    x = torch.randn(2, 4, 3)
    assert torch.equal(loaded.model(x)[0], model(x)[0])

    into = rnnkit.LSTM(3, 5, num_layers=2, batch_first=True)  # given model: weights copied in
    assert load_checkpoint(path, model=into).model is into
    assert_same_state(into, model)

    config = json.loads((path / "config.json").read_text())
    assert config["rnnkit_version"] == rnnkit.__version__
    assert config["model"] == rnnkit.config.serialize(model)
    assert config["model_class"] == "rnnkit.layers.rnn.LSTM"


def test_recurrence_gru_cell_round_trip_keeps_float64(tmp_path):
    model = randomised(rnnkit.Recurrence(rnnkit.GRUCell(3, 4))).double()
    save_checkpoint(tmp_path, model=model, trainer_state={}, step=0, extra={"note": "gru"})
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded.model.cell, rnnkit.GRUCell)
    assert loaded.extra == {"note": "gru"}
    assert_same_state(loaded.model, model)  # float64, bit for bit
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert torch.equal(loaded.model(x).output, model(x).output)


def test_configurable_model_with_tied_and_non_contiguous_tensors(tmp_path):
    model = randomised(TiedTagger(7, 4))
    with torch.no_grad():
        model.scale.mul_(0.5)
    assert not model.scale.is_contiguous()
    path = save_checkpoint(tmp_path, model=model, trainer_state={}, step=3)

    with safe_open(path / "model.safetensors", framework="pt") as handle:
        stored = set(handle.keys())
    # the tied weight is stored once (safetensors refuses shared memory), under one of its names
    assert len(stored & {"embedding.weight", "output.weight"}) == 1

    loaded = load_checkpoint(tmp_path).model
    assert isinstance(loaded, TiedTagger)
    assert loaded.output.weight is loaded.embedding.weight  # the constructor's tying survives
    assert_same_state(loaded, model)
    ids = torch.randint(0, 7, (2, 5))
    assert torch.equal(loaded(ids), model(ids))


def test_views_sharing_memory_are_saved_as_copies(tmp_path):
    """Two different views of one storage (not a tied weight) are both saved, each its own."""
    model = nn.Module()
    storage = torch.arange(12.0)
    model.register_buffer("first", storage[:6].view(2, 3))
    model.register_buffer("second", storage[6:].view(3, 2))
    save_checkpoint(tmp_path, model=model, trainer_state={}, step=1)
    target = nn.Module()
    target.register_buffer("first", torch.zeros(2, 3))
    target.register_buffer("second", torch.zeros(3, 2))
    load_checkpoint(tmp_path, model=target)
    assert torch.equal(target.first, storage[:6].view(2, 3))
    assert torch.equal(target.second, storage[6:].view(3, 2))


def test_optimizer_state_and_rng_states_resume_exactly(tmp_path):
    torch.manual_seed(0)
    model = rnnkit.GRU(3, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(5, 2, 3)

    def step(module: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        module(x)[0].square().mean().backward()
        opt.step()

    for _ in range(3):
        step(model, optimizer)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's and NumPy's generators
    np.random.standard_normal()
    rng = capture_rng_state()
    save_checkpoint(
        tmp_path, model=model, step=3,
        trainer_state={"optimizer": optimizer.state_dict(), "rng": rng, "epoch": 0},
    )
    # the oracle: the run that never stopped
    expected_draws = (random.gauss(0, 1), random.random(), np.random.standard_normal(),
                      np.random.rand(3), torch.rand(4))
    step(model, optimizer)

    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a fresh process, in effect
    resumed = load_checkpoint(tmp_path)
    resumed_optimizer = torch.optim.Adam(resumed.model.parameters(), lr=0.01)
    resumed_optimizer.load_state_dict(resumed.trainer_state["optimizer"])
    restore_rng_state(resumed.trainer_state["rng"])
    draws = (random.gauss(0, 1), random.random(), np.random.standard_normal(),
             np.random.rand(3), torch.rand(4))
    step(resumed.model, resumed_optimizer)

    assert draws[:3] == expected_draws[:3]
    assert np.array_equal(draws[3], expected_draws[3]) and torch.equal(draws[4], expected_draws[4])
    assert_same_state(resumed.model, model)


def test_rng_state_is_weights_only_safe(tmp_path):
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_cuda_rng_state_without_cuda_warns(monkeypatch):
    state = capture_rng_state()
    state["cuda"] = [torch.get_rng_state()]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        restore_rng_state(state)
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({"torch": torch.get_rng_state()})


def test_crash_after_tensors_are_written_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = randomised(rnnkit.LSTM(2, 3), seed=1)
    save_checkpoint(tmp_path, model=first, trainer_state={"step": 1}, step=1)

    def crash(path, state):
        assert (path.parent / "model.safetensors").stat().st_size > 0  # the tensors are written
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt, "_write_trainer_state", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, model=randomised(rnnkit.LSTM(2, 3), seed=2),
                        trainer_state={"step": 2}, step=2)
    assert list_checkpoints(tmp_path) == [tmp_path / "step-000000001"]
    assert sorted(os.listdir(tmp_path)) == ["step-000000001"]  # the temporary dir is gone
    loaded = load_checkpoint(tmp_path)
    assert loaded.trainer_state == {"step": 1}
    assert_same_state(loaded.model, first)


def test_crash_while_replacing_the_same_step_keeps_the_old_copy_loadable(tmp_path, monkeypatch):
    model = randomised(rnnkit.GRU(2, 3))
    save_checkpoint(tmp_path, model=model, trainer_state={"version": 1}, step=5)
    real_rename = os.rename
    calls = []

    def rename_then_die(source, target):
        calls.append((Path(source).name, Path(target).name))
        if len(calls) == 2:  # the old copy is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_rename(source, target)

    monkeypatch.setattr(ckpt.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model=model, trainer_state={"version": 2}, step=5)
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    # the old step-5 is aside and the new one not in place: the old one still loads
    assert "step-000000005" not in os.listdir(tmp_path)
    assert load_checkpoint(tmp_path).trainer_state == {"version": 1}
    assert len(list_checkpoints(tmp_path)) == 1
    # the next save (another step) gives it its name back and removes the temporary dir
    save_checkpoint(tmp_path, model=model, trainer_state={"version": 3}, step=6)
    assert sorted(os.listdir(tmp_path)) == ["step-000000005", "step-000000006"]
    assert load_checkpoint(tmp_path / "step-000000005").trainer_state == {"version": 1}
    save_checkpoint(tmp_path, model=model, trainer_state={"version": 4}, step=6, keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["step-000000006"]
    assert load_checkpoint(tmp_path).trainer_state == {"version": 4}


def test_leftover_temp_dirs_are_ignored_and_cleaned(tmp_path):
    model = rnnkit.GRU(2, 3)
    leftover = tmp_path / ".tmp-step-000000009-somehost-999999-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    with pytest.raises(CheckpointNotFoundError, match="interrupted save"):
        load_checkpoint(tmp_path)
    assert list_checkpoints(tmp_path) == []
    save_checkpoint(tmp_path, model=model, trainer_state={}, step=1)
    assert sorted(os.listdir(tmp_path)) == ["step-000000001"]


# One interpreter (importing torch takes seconds on a busy machine) forks a saving loop per run
# and SIGKILLs it at a random moment once checkpoints exist; the test then loads each run. Even
# runs save step after step (keep_last=2), odd runs save the same step over and over
# (keep_last=1: the old copy is the only one while the new one replaces it).
_KILLED_SAVING_LOOPS = textwrap.dedent("""
    import os, random, signal, sys, time, torch, rnnkit
    from rnnkit.training.checkpoint import list_checkpoints, save_checkpoint
    torch.set_num_threads(1)
    base, runs, chooser = sys.argv[1], int(sys.argv[2]), random.Random(int(sys.argv[3]))
    model = rnnkit.LSTM(64, 64, num_layers=2)  # about 270 kB of weights per checkpoint
    for run in range(runs):
        root = os.path.join(base, f"run{run}")
        same_step = run % 2 == 1
        pid = os.fork()
        if pid == 0:  # the saving loop, until killed
            version = 0
            while True:
                version += 1
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.fill_(float(version))
                save_checkpoint(root, model=model, trainer_state={"version": version},
                                step=7 if same_step else version,
                                keep_last=1 if same_step else 2)
        deadline = time.monotonic() + 60
        while not list_checkpoints(root) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(chooser.uniform(0.05, 0.3))  # inside a later save, or between saves
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the saving loops are forked (POSIX only)")
def test_sigkill_while_saving_leaves_a_loadable_newest_checkpoint(tmp_path):
    script = tmp_path / "killed_saving_loops.py"
    script.write_text(_KILLED_SAVING_LOOPS)
    runs = 6
    subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(runs), "1234"], cwd=REPO, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    for run in range(runs):
        root = tmp_path / f"run{run}"
        loaded = load_checkpoint(root)
        version = loaded.trainer_state["version"]
        assert loaded.step == (7 if run % 2 else version)
        assert all(torch.equal(value, torch.full_like(value, float(version)))
                   for value in loaded.model.state_dict().values())
        save_checkpoint(root, model=loaded.model, trainer_state={}, step=100, keep_last=2)
        assert not [name for name in os.listdir(root) if name.startswith(".")]  # cleaned


def _two_checkpoints(root: Path) -> tuple[nn.Module, nn.Module]:
    old, new = randomised(rnnkit.GRU(2, 3), seed=1), randomised(rnnkit.GRU(2, 3), seed=2)
    save_checkpoint(root, model=old, trainer_state={"step": 1}, step=1)
    save_checkpoint(root, model=new, trainer_state={"step": 2}, step=2)
    return old, new


def test_truncated_model_file_falls_back_with_a_warning(tmp_path):
    old, _ = _two_checkpoints(tmp_path)
    newest = tmp_path / "step-000000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])
    assert list_checkpoints(tmp_path) == [tmp_path / "step-000000001"]
    with pytest.warns(RuntimeWarning) as warned:
        loaded = load_checkpoint(tmp_path)
    message = str(warned[0].message)
    assert "step-000000002" in message and "step-000000001" in message and "truncated" in message
    assert loaded.step == 1
    assert_same_state(loaded.model, old)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "step-000000002")  # asked for by name: no silent fallback


def test_corrupt_trainer_state_falls_back_with_a_warning(tmp_path):
    old, _ = _two_checkpoints(tmp_path)
    trainer_file = tmp_path / "step-000000002" / "trainer.pt"
    data = bytearray(trainer_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    trainer_file.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"step-000000002.*SHA-256.*step-000000001"):
        loaded = load_checkpoint(tmp_path)
    assert loaded.trainer_state == {"step": 1}
    assert_same_state(loaded.model, old)


def test_no_usable_checkpoint_names_each_problem(tmp_path):
    _two_checkpoints(tmp_path)
    (tmp_path / "step-000000002" / "manifest.json").unlink()
    (tmp_path / "step-000000001" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    assert "step-000000002: no manifest.json" in message
    assert "step-000000001: config.json has 2 bytes" in message


def test_keep_last_prunes_after_the_new_checkpoint(tmp_path):
    model = rnnkit.GRU(2, 3)
    for step in range(1, 6):
        save_checkpoint(tmp_path, model=model, trainer_state={}, step=step, keep_last=2)
        expected = [tmp_path / f"step-{s:09d}" for s in range(step, max(step - 2, 0), -1)]
        assert list_checkpoints(tmp_path) == expected
    assert sorted(os.listdir(tmp_path)) == ["step-000000004", "step-000000005"]
    for step in range(6, 9):
        save_checkpoint(tmp_path, model=model, trainer_state={}, step=step, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 5
    with pytest.raises(ValueError, match="keep_last must be an int >= 1 or None, got 0"):
        save_checkpoint(tmp_path, model=model, trainer_state={}, step=9, keep_last=0)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        save_checkpoint(tmp_path, model=model, trainer_state={}, step=-1)


def test_manifest_checksums_are_sha256_of_each_file(tmp_path):
    path = save_checkpoint(tmp_path, model=rnnkit.GRU(2, 3), trainer_state={"a": 1}, step=1)
    manifest = json.loads((path / "manifest.json").read_text())
    for name in ("config.json", "model.safetensors", "trainer.pt"):
        data = (path / name).read_bytes()
        assert manifest["files"][name] == {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
        }


def matching_manifest(path: Path) -> None:
    """Rewrite path's manifest.json to match its files as they are now (hashlib, not rnnkit)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


_UNPICKLED = []


def _record_unpickling(tag):
    _UNPICKLED.append(tag)
    return tag


class Payload:
    """Unpickling it runs _record_unpickling: what weights_only=True must never allow."""

    def __reduce__(self):
        return (_record_unpickling, ("ran",))


def test_trainer_state_with_a_pickled_object_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, model=rnnkit.GRU(2, 3), trainer_state={}, step=1)
    trainer_file = path / "trainer.pt"
    torch.save({"payload": Payload()}, trainer_file)
    matching_manifest(path)  # the file is intact, only its content is not allowed
    with pytest.raises(CheckpointError, match="weights_only=True") as error:
        load_checkpoint(tmp_path)
    assert "refusing" in str(error.value) and "\n" not in str(error.value)
    assert "it needs tests.training.test_checkpoint._record_unpickling" in str(error.value)
    assert _UNPICKLED == []
    with open(trainer_file, "rb") as handle:  # the oracle: plain pickle would have run it
        torch.load(handle, weights_only=False)
    assert _UNPICKLED == ["ran"]


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    model = rnnkit.GRU(2, 3)
    with pytest.raises(TypeError, match=r"state\['callbacks'\]\[0\]\['fn'\] is a .*function"):
        save_checkpoint(tmp_path, model=model, step=1,
                        trainer_state={"callbacks": [{"fn": lambda: 0}]})
    with pytest.raises(TypeError, match=r"trainer_state\['mean'\] .*torch.from_numpy"):
        save_checkpoint(tmp_path, model=model, step=1, trainer_state={"mean": np.zeros(3)})
    with pytest.raises(TypeError, match=r"trainer_state\['loss'\] .*float64.*\.item\(\)"):
        save_checkpoint(tmp_path, model=model, step=1, trainer_state={"loss": np.float64(1)})
    with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
        save_checkpoint(tmp_path, model=model, step=1, trainer_state={}, extra={"x": object()})
    assert list_checkpoints(tmp_path) == []
    # everything torch.load(weights_only=True) accepts is accepted
    state = {"a": (1, 2.5, None, True, "s", b"b"), "b": [torch.ones(2)], "c": {3: {4}},
             "d": torch.float16, "e": torch.device("cpu"), "f": torch.Size([2, 3])}
    save_checkpoint(tmp_path, model=model, step=1, trainer_state=state)
    loaded = load_checkpoint(tmp_path).trainer_state
    assert loaded["a"] == state["a"] and loaded["c"] == state["c"] and loaded["f"] == state["f"]


def test_mismatched_shapes_name_the_first_parameter(tmp_path):
    save_checkpoint(tmp_path, model=rnnkit.LSTM(3, 5), trainer_state={}, step=1)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(tmp_path, model=rnnkit.LSTM(3, 6))
    message = str(error.value)
    assert "'weight_ih_l0' has shape (20, 3) in the checkpoint and (24, 3) in the LSTM" in message
    assert "\n" not in message


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    save_checkpoint(tmp_path, model=rnnkit.LSTM(3, 5, num_layers=2), trainer_state={}, step=1)
    with pytest.raises(CheckpointMismatchError, match=(
        r"in the checkpoint but not the model: 'weight_ih_l1', 'weight_hh_l1', 'bias_ih_l1', "
        r"'bias_hh_l1'$"
    )):
        load_checkpoint(tmp_path, model=rnnkit.LSTM(3, 5, num_layers=1))
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint: 'weight_ih_l2"):
        load_checkpoint(tmp_path, model=rnnkit.LSTM(3, 5, num_layers=3))


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointNotFoundError, match="is not a checkpoint: it has no manifest"):
        load_checkpoint(tmp_path)
    assert list_checkpoints(tmp_path / "nowhere") == []


def test_a_model_without_config_loads_only_into_a_given_model(tmp_path):
    model = PlainNet()
    save_checkpoint(tmp_path, model=model, trainer_state={}, step=1)
    with pytest.raises(CheckpointError, match="PlainNet without a config.*pass model="):
        load_checkpoint(tmp_path)
    target = PlainNet()
    load_checkpoint(tmp_path, model=target)
    assert_same_state(target, model)
    with pytest.raises(TypeError, match="rnnkit.save: rnnkit.load rebuilds .* PlainNet has none"):
        rnnkit.save(model, tmp_path / "final")


def test_rnnkit_save_and_load_a_finished_model(tmp_path):
    model = randomised(TiedTagger(5, 3))
    directory = rnnkit.save(model, tmp_path / "final", extra={"classes": ["a", "b"]})
    assert sorted(os.listdir(directory)) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = rnnkit.load(directory)
    assert isinstance(loaded, TiedTagger) and not loaded.training
    assert_same_state(loaded, model)
    assert json.loads((directory / "config.json").read_text())["extra"] == {"classes": ["a", "b"]}
    assert sorted(os.listdir(tmp_path)) == ["final"]  # no temporary directory left


def test_rnnkit_load_of_a_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    models = [randomised(rnnkit.GRU(2, 3), seed=seed) for seed in range(3)]
    for step, model in enumerate(models[:2], start=1):
        save_checkpoint(run_dir, model=model, trainer_state={}, step=step)
    (run_dir / "log.csv").write_text("epoch,loss\n")
    assert_same_state(rnnkit.load(run_dir), models[1])  # the newest step-* checkpoint
    rnnkit.save(models[2], run_dir)  # into the existing run directory
    assert_same_state(rnnkit.load(run_dir), models[2])  # the saved model wins
    resumed = load_checkpoint(run_dir)  # resuming still finds the newest step-* checkpoint
    assert resumed.step == 2 and resumed.trainer_state == {}
    assert_same_state(resumed.model, models[1])
    rnnkit.save(models[0], run_dir)  # saved again: replaced
    assert_same_state(rnnkit.load(run_dir), models[0])
    assert (run_dir / "log.csv").read_text() == "epoch,loss\n"
    assert len(list_checkpoints(run_dir)) == 2
    assert not [name for name in os.listdir(run_dir) if name.startswith(".")]


def test_unpickling_error_class_is_what_torch_raises():
    """The refusal path relies on torch raising pickle.UnpicklingError for weights_only."""
    import io

    buffer = io.BytesIO()
    torch.save(Payload(), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer, weights_only=True)


def test_docs_section_runs_and_prints_what_it_says(capsys):
    """docs/training.md "Checkpoints and resume": each example prints its "prints" block."""
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## Checkpoints and resume", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", section, flags=re.S)
    assert len(examples) == 3
    for index, (code, expected) in enumerate(examples):
        exec(compile(code, f"docs/training.md checkpoint example {index}", "exec"), {})  # noqa: S102
        assert capsys.readouterr().out == expected, f"example {index}"


def test_a_file_that_matches_its_manifest_but_does_not_parse(tmp_path):
    """Written corrupt (the checksum is of the bad bytes): a named directory raises, a root
    falls back; the messages are one line."""
    _two_checkpoints(tmp_path)
    newest = tmp_path / "step-000000002"
    (newest / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    matching_manifest(newest)
    with pytest.raises(CheckpointError, match="model.safetensors is unreadable") as error:
        load_checkpoint(newest)
    assert "\n" not in str(error.value)
    with pytest.warns(RuntimeWarning, match="model.safetensors is unreadable"):
        assert load_checkpoint(tmp_path).step == 1
    (newest / "config.json").write_text("{not json")
    matching_manifest(newest)
    with pytest.raises(CheckpointError, match="config.json is unreadable"):
        load_checkpoint(newest)


def test_wrapped_models_dtypes_and_empty_models(tmp_path):
    model = nn.Module()
    model.register_buffer("in_float16", torch.randn(3, dtype=torch.float16))
    model.register_buffer("in_bfloat16", torch.randn(2, 2, dtype=torch.bfloat16))
    model.register_buffer("counts", torch.tensor([1, 2**40], dtype=torch.int64))
    model.register_buffer("flags", torch.tensor([True, False]))
    model.register_buffer("empty", torch.zeros(0, 3))
    wrapped = nn.DataParallel(model)  # saved as the module inside: no "module." prefix
    save_checkpoint(tmp_path, model=wrapped, trainer_state={"p": nn.Parameter(torch.ones(2))},
                    step=1)
    target = nn.Module()
    for name, value in model.state_dict().items():
        target.register_buffer(name, torch.zeros_like(value))
    loaded = load_checkpoint(tmp_path, model=nn.DataParallel(target))
    assert_same_state(target, model)
    assert torch.equal(loaded.trainer_state["p"], torch.ones(2))

    save_checkpoint(tmp_path / "empty", model=nn.Identity(), trainer_state={}, step=0)
    assert load_checkpoint(tmp_path / "empty", model=nn.Identity()).step == 0


def test_rnnkit_save_cleans_its_own_leftover(tmp_path):
    leftover = tmp_path / ".tmp-final-somehost-999999-deadbeef"
    leftover.mkdir()
    unrelated = tmp_path / ".tmp-other-somehost-999999-deadbeef"
    unrelated.mkdir()
    rnnkit.save(rnnkit.GRU(2, 3), tmp_path / "final")
    assert sorted(os.listdir(tmp_path)) == [".tmp-other-somehost-999999-deadbeef", "final"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_and_rng_states(tmp_path):
    model = randomised(rnnkit.GRU(3, 4)).cuda()
    rng = capture_rng_state()
    assert len(rng["cuda"]) == torch.cuda.device_count()
    save_checkpoint(tmp_path, model=model, trainer_state={"rng": rng}, step=1)
    expected = torch.rand(3, device="cuda")
    loaded = load_checkpoint(tmp_path, map_location="cuda")
    assert next(loaded.model.parameters()).device.type == "cuda"
    assert_same_state(loaded.model, model)
    restore_rng_state(loaded.trainer_state["rng"])
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    into = load_checkpoint(tmp_path, model=rnnkit.GRU(3, 4)).model  # CUDA weights into a CPU model
    assert_same_state(into, model.cpu())


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "trainer.pt",
                                  "manifest.json"])
def test_any_file_truncated_or_flipped_falls_back(tmp_path, name):
    """Each file of the newest checkpoint, cut at random lengths or with a random byte flipped:
    always the previous checkpoint loads, with a warning, never a wrong or partial model."""
    chooser = random.Random(name)
    old, _ = _two_checkpoints(tmp_path)
    target = tmp_path / "step-000000002" / name
    original = target.read_bytes()
    damaged = [original[:cut] for cut in (0, 1, *chooser.sample(range(2, len(original)), 3))]
    for _ in range(3):
        flipped = bytearray(original)
        flipped[chooser.randrange(len(original))] ^= 1 << chooser.randrange(8)
        damaged.append(bytes(flipped))
    for data in damaged:
        target.write_bytes(data)
        with pytest.warns(RuntimeWarning, match="step-000000002 is unusable"):
            loaded = load_checkpoint(tmp_path)
        assert loaded.step == 1 and loaded.trainer_state == {"step": 1}
        assert_same_state(loaded.model, old)
    target.write_bytes(original)
    assert load_checkpoint(tmp_path).step == 2
