"""Every remaining error message of rnnkit.data names the problem; the layering holds."""

import ast
import os
import sys

import numpy as np
import pytest
import torch

import rnnkit.datasets
from rnnkit.data import (
    IDXSequenceDataset,
    MinibatchData,
    MinibatchSource,
    StreamDef,
    StreamDefs,
    TimeSeries,
    Vocabulary,
    batchify,
    bptt_batches,
    find_idx_pair,
    make_windows,
    pad_collate,
    prepare_windows,
    write_ctf,
    write_idx,
)
from rnnkit.data.batching import BucketBatchSampler, pad_sequences
from rnnkit.data.ctf import CTFDeserializer
from rnnkit.data.text import LanguageModelDataset, StatefulBatches
from rnnkit.data.timeseries import ScalerChain, StandardScaler, chronological_split

DATA_DIR = os.path.join(os.path.dirname(rnnkit.datasets.__file__), "data")


def test_rnnkit_data_imports_only_torch_numpy_and_itself():
    allowed = {"torch", "numpy", "rnnkit", "__future__"}
    for name in sorted(os.listdir(DATA_DIR)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(DATA_DIR, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                in_function = node.col_offset > 0  # lazy imports live inside functions
                if top == "rnnkit":  # _files: the stdlib-only atomic write every layer shares
                    assert mod.startswith(("rnnkit.data", "rnnkit._files")), f"{name} imports {mod}"
                elif top not in allowed and top not in sys.stdlib_module_names:
                    assert in_function and top == "pandas", f"{name} imports {mod} eagerly"


def test_optional_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match=r"needs the mnist1d package: pip install rnnkit\[data\]"):
        rnnkit.datasets.mnist1d(num_samples=10)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"needs pandas: pip install rnnkit\[data\]"):
        TimeSeries.from_array([1.0, 2.0]).to_dataframe()


def test_stream_schema_errors():
    with pytest.raises(ValueError, match="StreamDef shape must hold positive ints"):
        StreamDef(shape=(2, 0))
    with pytest.raises(ValueError, match="StreamDef field must be a name without"):
        StreamDef(field="a b")
    with pytest.raises(TypeError, match="stream 'x' must be a StreamDef, got int"):
        StreamDefs(x=3)
    mbd = MinibatchData.from_dense([np.ones((1, 2))], shape=2)
    with pytest.raises(TypeError, match="indices needs a sparse"):
        _ = mbd.indices


def test_source_errors(tmp_path):
    empty = tmp_path / "empty.ctf"
    empty.write_text("")
    src = MinibatchSource(CTFDeserializer(empty, StreamDefs(x=StreamDef())))
    with pytest.raises(ValueError, match="empty.ctf holds no sequences"):
        src.next_minibatch(10)
    with pytest.raises(TypeError, match="iterate with iter_minibatches"):
        iter(src)
    comments = tmp_path / "comments.ctf"
    comments.write_text("|# nothing but comments\r\n\n|# here\n")
    for randomize in (True, False):
        src = MinibatchSource(CTFDeserializer(comments, StreamDefs(x=StreamDef())),
                              randomize=randomize)
        with pytest.raises(ValueError, match="comments.ctf holds no sequences"):
            src.next_minibatch(10)
    no_newline = tmp_path / "last.ctf"
    no_newline.write_text("0 |x 1\n1 |x 2\n1 |x 3")  # no newline after the last line
    d = CTFDeserializer(no_newline, StreamDefs(x=StreamDef()), chunk_size_in_bytes=8)
    assert [s["x"].ravel().tolist() for s in d.iter_sequences()] == [[1.0], [2.0, 3.0]]
    path = tmp_path / "d.ctf"
    write_ctf(path, [{"x": [[1.0]]}] * 3)
    src = MinibatchSource(CTFDeserializer(path, StreamDefs(x=StreamDef())), max_sweeps=2)
    assert sum(mb.num_samples for mb in src.iter_minibatches(2)) == 6


def test_writer_more_errors(tmp_path):
    with pytest.raises(ValueError, match="sequence id 'a b' must be non-empty, without spaces"):
        write_ctf(tmp_path / "e.ctf", [{"x": [[1.0]]}], ids=["a b"])
    with pytest.raises(TypeError, match="a 1-D sample list must hold int class indices"):
        write_ctf(tmp_path / "e.ctf", [{"y": [0.5]}], sparse={"y": 3})


def test_idx_more_errors(tmp_path):
    with pytest.raises(ValueError, match="IDX needs 1 to 255 dimensions, got 0"):
        write_idx(tmp_path / "z", np.uint8(3))
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        find_idx_pair(tmp_path, "val")
    with pytest.raises(ValueError, match=r"images must be \(N, rows, cols\), got shape \(3, 4\)"):
        IDXSequenceDataset(np.zeros((3, 4), np.uint8))


def test_batching_more_errors():
    with pytest.raises(ValueError, match="cannot pad an empty batch"):
        pad_sequences([])
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        pad_collate([])
    with pytest.raises(ValueError, match="bucket_multiplier must be >= 1, got 0"):
        BucketBatchSampler([1, 2], 1, bucket_multiplier=0)


def test_text_more_errors():
    with pytest.raises(ValueError, match="specials must include '<pad>' and '<unk>'"):
        Vocabulary(["a"], specials=["<pad>"])
    with pytest.raises(ValueError, match="tokens must be non-empty strings, got ''"):
        Vocabulary([""])
    with pytest.raises(ValueError, match="min_freq must be >= 1, got 0"):
        Vocabulary.build(["a"], min_freq=0)
    with pytest.raises(ValueError, match=r"token ids must be 1-D \(N,\), got shape \(2, 2\)"):
        batchify(torch.zeros(2, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        LanguageModelDataset([1, 2, 3], seq_len=0)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        LanguageModelDataset([1, 2, 3], seq_len=1, stride=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batchify([1, 2, 3], 0)
    with pytest.raises(ValueError, match=r"data must be \(T, B\) from batchify"):
        next(bptt_batches(torch.zeros(3), 2))
    with pytest.raises(ValueError, match="bptt must be >= 1, got 0"):
        next(bptt_batches(torch.zeros(3, 1), 0))
    with pytest.raises(ValueError, match="bptt must be >= 1, got 0"):
        StatefulBatches(list(range(10)), 2, 0)


def test_timeseries_more_errors(tmp_path):
    with pytest.raises(ValueError, match="inputs has 3 rows but values has 4"):
        make_windows(np.arange(4.0), 1, inputs=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="split fraction train=1.5 must be in"):
        chronological_split(10, 1.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="StandardScaler.fit got NaN or inf"):
        StandardScaler().fit([[np.nan]])
    with pytest.raises(ValueError, match="ScalerChain needs at least one scaler"):
        ScalerChain([])
    with pytest.raises(ValueError, match="the training part .* is too short for look_back=50"):
        prepare_windows(np.arange(60.0), look_back=50)
    with pytest.raises(ValueError, match="this series has no dates, so no calendar features"):
        prepare_windows(np.arange(60.0), look_back=5, calendar=True)
    with pytest.raises(ValueError, match="2 column names for 1 columns"):
        TimeSeries(np.zeros((3, 1)), ["a", "b"])
    with pytest.raises(ValueError, match="2 dates for 3 rows"):
        TimeSeries.from_array(np.zeros(3), dates=["2000-01", "2000-02"])
    short = tmp_path / "short.csv"
    short.write_text("a\n")
    with pytest.raises(ValueError, match="short.csv: needs a header row and at least one"):
        TimeSeries.from_csv(short)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1\n")
    with pytest.raises(ValueError, match="ragged.csv, line 2: 1 fields, header has 2"):
        TimeSeries.from_csv(ragged)
    with pytest.raises(ValueError, match="no column 'z'"):
        TimeSeries.from_csv(_ok(tmp_path), value_columns=["z"])
    with pytest.raises(TypeError, match="from_dataframe needs a pandas DataFrame, got list"):
        TimeSeries.from_dataframe([1, 2])


def _ok(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("a,b\n1,2\n")
    return path
