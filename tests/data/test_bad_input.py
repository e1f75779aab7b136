"""Bad input to rnnkit.data gets one clear line that names the problem (issue 16).

``CASES`` is the table: ``(id, call, exception type, regex the message must contain)``. ``call``
takes a temporary folder (for the file cases). When you add an argument to a public function of
rnnkit.data, add a row for each way it can be wrong. The corrected results (values that used to
be lost in silence) are checked by the functions after the table, against independent oracles.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch

import rnnkit.datasets
from rnnkit.data import (
    BucketBatchSampler,
    IDXFormatError,
    IDXSequenceDataset,
    LabeledSequences,
    LanguageModelDataset,
    LogScaler,
    MinMaxScaler,
    PadCollate,
    StandardScaler,
    StatefulBatches,
    TimeSeries,
    Vocabulary,
    batchify,
    bptt_batches,
    calendar_features,
    chronological_split,
    pad_collate,
    pad_sequences,
    prepare_windows,
    read_idx,
    write_idx,
)
from rnnkit.data.ctf import (
    CTFDeserializer,
    CTFFormatError,
    StreamDef,
    StreamDefs,
    read_ctf,
)
from rnnkit.data.timeseries import make_windows
from rnnkit.engine.loop import check_lengths

NAN = float("nan")
_CTF = StreamDefs(x=StreamDef(shape=2), y=StreamDef(shape=3, is_sparse=True))


def _file(folder, name: str, text: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _csv(folder, name: str, rows: str, header: str = "date,v") -> str:
    return _file(folder, name, header + "\n" + rows)


def _series_with_nan_in_test_rows() -> TimeSeries:
    ts = TimeSeries.from_array(np.arange(1.0, 101.0))
    ts.values[97, 0] = NAN  # edited after construction: prepare_windows must still see it
    return ts


def _idx_overflow(folder) -> str:
    # 4 dimensions of 65536: the element count 2**64 wraps to 0 in int64
    path = os.path.join(folder, "overflow-idx4-ubyte")
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *[65536] * 4))
    return path


def _vocab_file(folder, **entries) -> str:
    d = {"format": "rnnkit.Vocabulary", "version": 1, "level": "char", "lower": False,
         "specials": ["<pad>", "<unk>"], "tokens": ["a"]}
    d.update(entries)
    d = {k: v for k, v in d.items() if v is not None}
    return _file(folder, "vocab.json", json.dumps(d))


def _pandas_frame_with_nan():
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"v": [1.0, NAN, 3.0]},
                        index=pd.to_datetime(["2000-01-01", "2000-01-02", "2000-01-03"]))


IDS = list(range(20))
IMAGES = np.zeros((3, 4, 5), np.uint8)

CASES = [
    # ---- time series: NaN and non-numbers never pass in silence
    ("make_windows NaN", lambda t: make_windows([1, 2, NAN, 4, 5], 2),
     ValueError, r"values holds nan at row 2, column 0"),
    ("make_windows NaN in inputs",
     lambda t: make_windows(np.arange(5.0), 2, inputs=[[0.0], [NAN], [0], [0], [0]]),
     ValueError, r"inputs holds nan at row 1, column 0"),
    ("make_windows inf", lambda t: make_windows([1, 2, 3, float("inf")], 2),
     ValueError, r"values holds inf at row 3"),
    ("make_windows string value", lambda t: make_windows([1, 2, "abc", 4], 2),
     TypeError, r"values\[2\] is 'abc' \(str\); values must hold numbers"),
    ("make_windows ragged rows", lambda t: make_windows([[1, 2], [3]], 1),
     ValueError, r"values must be a rectangular .* rows have different lengths"),
    ("make_windows float look_back", lambda t: make_windows(np.arange(9.0), 2.5),
     TypeError, r"look_back must be an int, got float \(2.5\)"),
    ("make_windows float first_target",
     lambda t: make_windows(np.arange(9.0), 2, first_target=3.5),
     TypeError, r"first_target must be an int, got float"),
    ("prepare_windows NaN in the test rows",
     lambda t: prepare_windows(np.r_[np.arange(1.0, 98.0), NAN, 1.0, 1.0], look_back=3),
     ValueError, r"row 97, column 'value': missing or non-finite value \(nan\)"),
    ("prepare_windows NaN edited into a TimeSeries",
     lambda t: prepare_windows(_series_with_nan_in_test_rows(), look_back=3),
     ValueError, r"the series holds nan at row 97, column 'value'"),
    ("prepare_windows look_back=0", lambda t: prepare_windows(np.arange(99.0), look_back=0),
     ValueError, r"look_back must be >= 1, got 0"),
    ("prepare_windows horizon=0",
     lambda t: prepare_windows(np.arange(99.0), look_back=3, horizon=0),
     ValueError, r"horizon must be >= 1, got 0"),
    ("prepare_windows four split fractions",
     lambda t: prepare_windows(np.arange(99.0), 3, splits=(0.5, 0.2, 0.1, 0.2)),
     ValueError, r"splits must be \(train, val\) or \(train, val, test\) fractions"),
    ("prepare_windows target column out of range",
     lambda t: prepare_windows(np.arange(99.0), 3, target_columns=[3]),
     IndexError, r"target column 3 out of range for 1 columns"),
    ("chronological_split leaves rows out", lambda t: chronological_split(100, 0.5, 0.2, 0.1),
     ValueError, r"sum to 0\.800 < 1: the newest 20 of 100 rows would belong to no split"),
    ("chronological_split four fractions",
     lambda t: chronological_split(100, 0.5, 0.2, 0.1, 0.2),
     TypeError, r"takes 2 or 3 fractions \(train, val\[, test\]\), got 4"),
    ("chronological_split str fraction", lambda t: chronological_split(100, "0.5", 0.2),
     TypeError, r"split fraction train must be a number, got str"),
    ("chronological_split float n", lambda t: chronological_split(99.5),
     TypeError, r"n must be an int, got float"),
    # ---- scalers
    ("LogScaler.fit NaN", lambda t: LogScaler().fit([1.0, NAN]),
     ValueError, r"LogScaler\.fit got NaN or inf values: nan at row 1, column 0"),
    ("MinMaxScaler.fit inf", lambda t: MinMaxScaler().fit([[1.0, float("inf")]]),
     ValueError, r"MinMaxScaler\.fit got NaN or inf values: inf at row 0, column 1"),
    ("StandardScaler.fit NaN", lambda t: StandardScaler().fit([NAN]),
     ValueError, r"StandardScaler\.fit got NaN or inf values"),
    ("scaler transform of strings",
     lambda t: MinMaxScaler().fit([[1.0], [2.0]]).transform([["a"]]),
     TypeError, r"values\[0, 0\] is 'a' \(str\); values must hold numbers"),
    ("scaler transform of a scalar", lambda t: MinMaxScaler().fit([[1.0], [2.0]]).transform(3.0),
     ValueError, r"a scaler needs \(\.\.\., F\) values, got the scalar 3\.0"),
    ("prepare_windows scaler of a wrong type",
     lambda t: prepare_windows(np.arange(99.0), 3, scaler=5),
     TypeError, r"scaler must be a name \(minmax, standard, log\), a Scaler, a list of those "
                r"or None, got int"),
    ("LogScaler str offset", lambda t: LogScaler(offset="1"),
     TypeError, r"offset must be a number, got str"),
    ("scaler column out of range",
     lambda t: MinMaxScaler().fit([[1.0], [2.0]]).transform([[1.0]], columns=[5]),
     IndexError, r"MinMaxScaler column 5 out of range for 1 columns"),
    ("scaler columns not a list",
     lambda t: StandardScaler().fit([[1.0], [2.0]]).inverse_transform([[1.0]], columns="0"),
     TypeError, r"StandardScaler columns must be a list of ints, got str"),
    ("MinMaxScaler feature_range of one value", lambda t: MinMaxScaler(feature_range=(0,)),
     ValueError, r"feature_range must be a pair \(low, high\), got \(0,\)"),
    ("MinMaxScaler feature_range of strings", lambda t: MinMaxScaler(feature_range=("0", "1")),
     TypeError, r"feature_range must hold two numbers"),
    # ---- dates
    ("calendar_features 2-D dates",
     lambda t: calendar_features(np.array([["2000-01", "2000-02"]])),
     ValueError, r"dates must be 1-D \(N,\), got shape \(1, 2\)"),
    ("calendar_features missing date", lambda t: calendar_features(["2000-01", "NaT"]),
     ValueError, r"dates\[1\] is missing"),
    ("calendar_features bad date", lambda t: calendar_features(["2000-01", "Feb 2000"]),
     ValueError, r"dates\[1\]: cannot parse 'Feb 2000' as a date"),
    ("from_csv bad date on line 4",
     lambda t: TimeSeries.from_csv(_csv(t, "bad.csv", "2000-01,1\n2000-02,2\n2000-0x,3\n")),
     ValueError, r"bad\.csv, line 4: cannot parse '2000-0x' as a date"),
    ("from_csv reads 'NaN'",
     lambda t: TimeSeries.from_csv(_csv(t, "nan.csv", "2000-01,1\n2000-02,NaN\n2000-03,3\n")),
     ValueError, r"nan\.csv, line 3, column 'v': missing or non-finite value \(nan\); pass "
                 r"fill="),
    ("from_csv empty field",
     lambda t: TimeSeries.from_csv(_csv(t, "empty.csv", "2000-01,1\n2000-02,2\n2000-03,\n")),
     ValueError, r"empty\.csv, line 4, column 'v': missing"),
    ("from_csv duplicated date",
     lambda t: TimeSeries.from_csv(_csv(t, "dup.csv", "2000-01,1\n2000-02,2\n2000-02,3\n")),
     ValueError, r"dup\.csv, line 4: the date 2000-02 repeats the date of .*dup\.csv, line 3"),
    ("from_csv dates out of order (a blank line keeps the line numbers true)",
     lambda t: TimeSeries.from_csv(_csv(t, "ord.csv", "2000-01,1\n2000-03,2\n\n2000-02,3\n")),
     ValueError, r"ord\.csv, line 5: the date 2000-02 comes before 2000-03 on .*ord\.csv, "
                 r"line 3; dates must increase"),
    ("from_csv gap in the dates",
     lambda t: TimeSeries.from_csv(_csv(t, "gap.csv", "2000-01,1\n2000-02,2\n2000-05,5\n")),
     ValueError, r"gap\.csv, line 4: the dates jump from 2000-02 to 2000-05 .* freq=None"),
    ("from_csv missing date",
     lambda t: TimeSeries.from_csv(_csv(t, "nodate.csv", "2000-01,1\n,2\n"),
                                   date_column="date"),
     ValueError, r"nodate\.csv, line 3: the date is missing"),
    ("from_csv unknown fill",
     lambda t: TimeSeries.from_csv(_csv(t, "f.csv", "2000-01,1\n"), fill="zero"),
     ValueError, r"fill must be None, 'ffill', 'interpolate' or a number, got 'zero'"),
    ("from_csv bad freq",
     lambda t: TimeSeries.from_csv(_csv(t, "f.csv", "2000-01,1\n"), freq="2X"),
     ValueError, r"freq must be 'auto', None, a timedelta64 or a string such as '1D'"),
    ("from_csv ffill with nothing before",
     lambda t: TimeSeries.from_csv(_csv(t, "ff.csv", "2000-01,\n2000-02,2\n"), fill="ffill"),
     ValueError, r"ff\.csv, line 2, column 'v': the first value is missing, so fill='ffill' "
                 r"has nothing to carry forward"),
    ("from_csv business days need freq=None",
     lambda t: TimeSeries.from_csv(_csv(t, "bd.csv", "2024-01-04,1\n2024-01-05,2\n"
                                        "2024-01-08,3\n2024-01-09,4\n")),
     ValueError, r"bd\.csv, line 4: the dates jump from 2024-01-05 to 2024-01-08 \(the "
                 r"series' step is 1 days\)"),
    ("from_array dates out of order",
     lambda t: TimeSeries.from_array([1.0, 2.0], dates=["2000-01-03", "2000-01-02"]),
     ValueError, r"row 1: the date 2000-01-02 comes before 2000-01-03 on row 0"),
    ("from_array NaN", lambda t: TimeSeries.from_array([1.0, NAN]),
     ValueError, r"row 1, column 'value': missing or non-finite value"),
    ("from_dataframe NaN", lambda t: TimeSeries.from_dataframe(_pandas_frame_with_nan()),
     ValueError, r"row 1, column 'v': missing or non-finite value"),
    ("TimeSeries with NaN", lambda t: TimeSeries(np.array([[1.0], [NAN]]), ["v"]),
     ValueError, r"the series holds nan at row 1, column 'v'"),
    # ---- text
    ("Vocabulary.build of an empty text", lambda t: Vocabulary.build([""]),
     ValueError, r"Vocabulary\.build: the texts hold no tokens .* every id would be <unk>"),
    ("Vocabulary.build with min_freq above every count",
     lambda t: Vocabulary.build(["abc"], min_freq=5),
     ValueError, r"no token occurs min_freq=5 times"),
    ("Vocabulary.build min_freq='2'", lambda t: Vocabulary.build(["abc"], min_freq="2"),
     TypeError, r"min_freq must be an int, got str \('2'\)"),
    ("Vocabulary.build max_size float", lambda t: Vocabulary.build(["abc"], max_size=1.5),
     TypeError, r"max_size must be an int, got float"),
    ("Vocabulary.build non-str text", lambda t: Vocabulary.build(["ok", 3]),
     TypeError, r"texts\[1\] must be a str, got int"),
    ("Vocabulary of a str", lambda t: Vocabulary("abc"),
     TypeError, r"tokens must be a list of token strings, got the str 'abc'"),
    ("Vocabulary.load without tokens", lambda t: Vocabulary.load(_vocab_file(t, tokens=None)),
     ValueError, r"vocab\.json: the vocabulary file has no 'tokens' entry"),
    ("Vocabulary.load tokens not a list",
     lambda t: Vocabulary.load(_vocab_file(t, tokens="abc")),
     ValueError, r"vocab\.json: 'tokens' must be a list, got str"),
    ("Vocabulary.load duplicate token",
     lambda t: Vocabulary.load(_vocab_file(t, tokens=["a", "a"])),
     ValueError, r"vocab\.json: duplicate token 'a'"),
    ("Vocabulary.save into a missing folder",
     lambda t: Vocabulary.build(["ab"]).save(os.path.join(t, "missing", "v.json")),
     FileNotFoundError, r"cannot save the vocabulary to \S*missing/v\.json: the folder"),
    ("encode(None)", lambda t: Vocabulary.build(["ab"]).encode(None),
     TypeError, r"encode needs a str, got NoneType"),
    ("decode of a float id", lambda t: Vocabulary.build(["ab"]).decode([2, 1.7]),
     TypeError, r"decode needs integer ids, got 1\.7"),
    ("LanguageModelDataset seq_len=2.5", lambda t: LanguageModelDataset(IDS, seq_len=2.5),
     TypeError, r"seq_len must be an int, got float \(2\.5\)"),
    ("LanguageModelDataset stride='1'", lambda t: LanguageModelDataset(IDS, 2, stride="1"),
     TypeError, r"stride must be an int, got str"),
    ("LanguageModelDataset float token ids",
     lambda t: LanguageModelDataset([0.5, 1.7, 2.0], seq_len=1),
     TypeError, r"token ids must be integers, got dtype torch\.float32"),
    ("LanguageModelDataset float tensor ids",
     lambda t: LanguageModelDataset(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 1),
     TypeError, r"token ids must be integers, got dtype torch\.float64"),
    ("LanguageModelDataset negative id", lambda t: LanguageModelDataset([1, -3, 2], 1),
     ValueError, r"token ids must be >= 0, got ids\[1\] = -3"),
    ("LanguageModelDataset float index", lambda t: LanguageModelDataset(IDS, 2)[1.5],
     TypeError, r"window index must be an int, got float"),
    ("batchify batch_size='2'", lambda t: batchify(IDS, "2"),
     TypeError, r"batch_size must be an int, got str \('2'\)"),
    ("StatefulBatches batch_size=2.7", lambda t: StatefulBatches(IDS, batch_size=2.7, bptt=4),
     TypeError, r"batch_size must be an int, got float \(2\.7\)"),
    ("StatefulBatches bptt=2.5", lambda t: StatefulBatches(IDS, batch_size=2, bptt=2.5),
     TypeError, r"bptt must be an int, got float"),
    ("bptt_batches of a list", lambda t: next(bptt_batches([[1, 2]], 2)),
     TypeError, r"data must be the \(T, B\) tensor from batchify, got list"),
    # ---- IDX and the sample data sets
    ("IDX header whose size overflows", lambda t: read_idx(_idx_overflow(t)),
     IDXFormatError, r"overflow-idx4-ubyte: truncated: shape \(65536, 65536, 65536, 65536\)"),
    ("write_idx into a missing folder",
     lambda t: write_idx(os.path.join(t, "missing", "a-idx1-ubyte"), np.zeros(3, np.uint8)),
     FileNotFoundError, r"^cannot write \S*missing/a-idx1-ubyte: the folder \S*missing does "
                        r"not exist$"),
    ("IDXSequenceDataset NaN float labels",
     lambda t: IDXSequenceDataset(IMAGES, np.array([1.0, NAN, 2.0])),
     ValueError, r"labels must be whole class indices, got labels\[1\] = nan"),
    ("IDXSequenceDataset fractional labels",
     lambda t: IDXSequenceDataset(IMAGES, np.array([1.0, 2.5, 2.0])),
     ValueError, r"labels\[1\] = 2\.5"),
    ("IDXSequenceDataset negative labels",
     lambda t: IDXSequenceDataset(IMAGES, np.array([1, -1, 2])),
     ValueError, r"labels must be >= 0, got labels\[1\] = -1"),
    ("IDXSequenceDataset string labels",
     lambda t: IDXSequenceDataset(IMAGES, np.array(["a", "b", "c"])),
     TypeError, r"labels must be integer class indices, got dtype <U1"),
    ("IDXSequenceDataset images of a wrong type", lambda t: IDXSequenceDataset(3),
     TypeError, r"images must be an IDX file path, a NumPy array, a tensor or a list, got int"),
    ("LabeledSequences 2-D x", lambda t: LabeledSequences(np.zeros((3, 4))),
     ValueError, r"x must be \(N, T, F\), got shape \(3, 4\)"),
    ("LabeledSequences y of another length",
     lambda t: LabeledSequences(np.zeros((3, 4, 1)), [0, 1]),
     ValueError, r"y must be \(3,\) to match x, got shape \(2,\)"),
    ("mnist split='val'", lambda t: rnnkit.datasets.mnist(t, split="val"),
     ValueError, r"split must be 'train' or 'test', got 'val'"),
    # ---- batching
    ("pad_collate samples with other keys",
     lambda t: pad_collate([{"a": torch.ones(2), "b": torch.ones(2)},
                            {"a": torch.ones(3), "c": torch.ones(3)}]),
     ValueError, r"sample 1 has keys \['a', 'c'\], sample 0 has \['a', 'b'\]"),
    ("pad_collate tuples of other lengths",
     lambda t: pad_collate([(torch.ones(2), 0), (torch.ones(3), 1, 5)]),
     ValueError, r"sample 1 has 3 elements, sample 0 has 2 elements"),
    ("pad_collate a tensor among tuples",
     lambda t: pad_collate([(torch.ones(2), 0), torch.ones(3)]),
     ValueError, r"sample 1 has a Tensor, sample 0 has 2 elements"),
    ("pad_collate targets of other shapes",
     lambda t: pad_collate([(torch.ones(2), torch.zeros(2)), (torch.ones(3), torch.zeros(5))]),
     ValueError, r"element 1 of sample 1 has shape \(5,\), sample 0's has \(2,\)"),
    ("pad_collate per-step shapes differ in a dict",
     lambda t: pad_collate([{"a": torch.ones(2, 3)}, {"a": torch.ones(2, 4)}]),
     ValueError, r"key 'a': item 1 has per-step shape \(4,\), item 0 has \(3,\)"),
    ("pad_sequences of strings", lambda t: pad_sequences([torch.ones(2), "ab"]),
     TypeError, r"item 1 is not a tensor or a rectangular list of numbers \(str\)"),
    ("PadCollate batch_first='yes'", lambda t: PadCollate(batch_first="yes"),
     TypeError, r"batch_first must be a bool, got str"),
    ("BucketBatchSampler negative length", lambda t: BucketBatchSampler([3, -4, 5], 2),
     ValueError, r"lengths must be >= 0, got lengths\[1\] = -4"),
    ("BucketBatchSampler float lengths", lambda t: BucketBatchSampler([3, 2.5], 2),
     TypeError, r"lengths must be integers, got dtype float64"),
    ("BucketBatchSampler batch_size=2.5", lambda t: BucketBatchSampler([3, 4, 5], 2.5),
     TypeError, r"batch_size must be an int, got float \(2\.5\)"),
    ("BucketBatchSampler bucket_multiplier='2'",
     lambda t: BucketBatchSampler([3, 4], 1, bucket_multiplier="2"),
     TypeError, r"bucket_multiplier must be an int, got str"),
    ("BucketBatchSampler set_epoch(1.5)", lambda t: BucketBatchSampler([3, 4], 1).set_epoch(1.5),
     TypeError, r"epoch must be an int, got float"),
    # ---- CTF files: file, line and column named (more in tests/data/test_ctf*.py)
    ("read_ctf non-numeric value", lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2x\n"), _CTF),
     CTFFormatError, r"a\.ctf, line 1, column 8: non-numeric value '2x' in stream 'x'$"),
    ("read_ctf float32 overflow", lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 1e39\n"), _CTF),
     CTFFormatError, r"line 1, column 8: value '1e39' in stream 'x' overflows float32 "
                     r"\(declare the stream with StreamDef\(dtype='float64'\) to read it\)"),
    ("read_ctf float64 overflow",
     lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 1e999\n"),
                        StreamDefs(x=StreamDef(shape=2, dtype="float64"))),
     CTFFormatError, r"line 1, column 8: value '1e999' in stream 'x' overflows float64"),
    ("read_ctf more values than dim", lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2 3\n"), _CTF),
     CTFFormatError, r"line 1, column 4: stream 'x' expects 2 values, got 3$"),
    ("read_ctf fewer values, strict",
     lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2\n0 |x 1\n"), _CTF, strict=True),
     CTFFormatError, r"line 2, column 4: stream 'x' expects 2 values, got 1 \(strict=True\)"),
    ("read_ctf sparse index out of range",
     lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2 |y 3:1\n"), _CTF),
     CTFFormatError, r"line 1, column 13: sparse index 3 of stream 'y' is out of range for "
                     r"dimension 3"),
    ("read_ctf sparse value without index",
     lambda t: read_ctf(_file(t, "a.ctf", "0 |y 1.5\n"), _CTF),
     CTFFormatError, r"line 1, column 6: sparse stream 'y' expects index:value, got '1\.5'"),
    ("read_ctf '| x'", lambda t: read_ctf(_file(t, "a.ctf", "0 | x 1 2\n"), _CTF),
     CTFFormatError, r"line 1, column 3: '\|' must be followed directly by a stream name or "
                     r"'#'"),
    ("read_ctf stream twice on a line",
     lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2 |x 3 4\n"), _CTF),
     CTFFormatError, r"line 1, column 11: stream 'x' appears twice on one line"),
    ("read_ctf line without '|'", lambda t: read_ctf(_file(t, "a.ctf", "0 |x 1 2\n1 2\n"), _CTF),
     CTFFormatError, r"line 2, column 1: expected '\|' followed by a stream name"),
    ("CTFDeserializer max_errors=-1",
     lambda t: CTFDeserializer(_file(t, "a.ctf", "0 |x 1 2\n"), _CTF, max_errors=-1),
     ValueError, r"max_errors must be an int >= 0, got -1"),
    ("CTFDeserializer parser='fast'",
     lambda t: CTFDeserializer(_file(t, "a.ctf", "0 |x 1 2\n"), _CTF, parser="fast"),
     ValueError, r"parser must be 'auto', 'native' or 'python', got 'fast'"),
    ("StreamDef dtype='int32'", lambda t: StreamDef(shape=2, dtype="int32"),
     ValueError, r"StreamDef dtype must be 'float32' or 'float64', got 'int32'"),
    # ---- lengths on another device: one place to put them, said once
    ("lengths on another device, input on the CPU",
     lambda t: check_lengths(torch.tensor([2, 1], device="meta"), 2, 3, "cpu"),
     ValueError, r"lengths are on device meta but the input is on cpu; put lengths on the "
                 r"CPU$"),
]


@pytest.mark.parametrize("call, error, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(tmp_path, call, error, words):
    with pytest.raises(error, match=words) as info:
        call(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message, "messages are one line"
    assert ".tmp-" not in message, "messages name the user's path, not a temporary file"


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------ corrected results (never lost)
def test_pad_sequences_promotes_like_torch_result_type():
    ints, floats = torch.arange(3), torch.tensor([0.25, -1.5])
    padded, lengths = pad_sequences([ints, floats])  # (T, B)
    assert padded.dtype == torch.result_type(ints, floats) == torch.float32
    assert padded[:, 1].tolist() == [0.25, -1.5, 0.0] and padded[:, 0].tolist() == [0, 1, 2]
    assert lengths.tolist() == [3, 2]
    for a, b in ((torch.float16, torch.float64), (torch.int32, torch.int64),
                 (torch.bool, torch.int8), (torch.uint8, torch.float32)):
        x, y = torch.ones(2, dtype=a), torch.ones(1, dtype=b)
        assert pad_sequences([x, y])[0].dtype == torch.result_type(x, y)
    # a stacked target column promotes the same way
    _, _, y = pad_collate([(torch.ones(2), 1), (torch.ones(3), 0.5)])
    assert y.tolist() == [1.0, 0.5]


def test_ids_and_lengths_as_tensors_or_numpy_ints_are_accepted():
    ds = LanguageModelDataset(torch.arange(10, dtype=torch.int32), seq_len=np.int64(3))
    assert ds[0][0].dtype == torch.int64 and ds[0][1].tolist() == [1, 2, 3]
    sampler = BucketBatchSampler(torch.tensor([3, 0, 5]), batch_size=np.int32(2), shuffle=False)
    assert list(sampler) == [[1, 0], [2]]


def test_idx_dataset_accepts_tensors_and_whole_float_labels():
    images = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    ds = IDXSequenceDataset(images, torch.tensor([3.0, 1.0]))
    assert ds.labels.tolist() == [3, 1] and ds.labels.dtype == torch.int64
    torch.testing.assert_close(ds[1][0], images[1].float() / 255.0)


def test_chronological_split_puts_every_row_in_exactly_one_part():
    # brute force over sizes and fractions: the parts tile [0, n) in order, none is lost
    for n in (1, 7, 10, 99, 100, 144):
        for fractions in ((0.7, 0.15), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25), (1.0, 0.0),
                          (0.8, 0.1, 0.1)):
            if int(n * fractions[0]) < 1:
                continue
            parts = chronological_split(n, *fractions)
            rows = [r for p in parts for r in range(p.start, p.stop)]
            assert rows == list(range(n)), (n, fractions)


def test_fill_ffill_interpolate_and_number_by_hand(tmp_path):
    # monthly: 2000-02 missing value, 2000-04 and 2000-05 missing rows (a gap)
    path = _csv(tmp_path, "m.csv", "2000-01,1\n2000-02,\n2000-03,3\n2000-06,9\n")
    dates = ["2000-01", "2000-02", "2000-03", "2000-04", "2000-05", "2000-06"]
    expected = {"ffill": [1, 1, 3, 3, 3, 9], "interpolate": [1, 2, 3, 5, 7, 9],
                -1.0: [1, -1, 3, -1, -1, 9]}
    for fill, values in expected.items():
        ts = TimeSeries.from_csv(path, fill=fill)
        assert ts.values.ravel().tolist() == values, fill
        assert [str(d) for d in ts.dates] == dates
    # dates written as month starts are months, not 28-31 days
    days = _csv(tmp_path, "d.csv", "2000-01-01,1\n2000-02-01,2\n2000-04-01,4\n")
    ts = TimeSeries.from_csv(days, fill="interpolate")
    assert ts.values.ravel().tolist() == [1, 2, 3, 4]
    assert str(ts.dates[2]) == "2000-03"
    # irregular on purpose: freq=None keeps the rows as they are
    irregular = _csv(tmp_path, "i.csv", "2024-01-04,1\n2024-01-05,2\n2024-01-08,3\n")
    assert len(TimeSeries.from_csv(irregular, freq=None)) == 3
    assert len(TimeSeries.from_csv(irregular, freq="1D", fill="ffill")) == 5


def test_fill_interpolate_matches_pandas_on_daily_data(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    dates = pd.date_range("2024-01-01", periods=40, freq="D")
    keep = np.sort(rng.choice(40, size=25, replace=False))
    keep = np.union1d(keep, [0, 39])  # both ends present: pandas does not extrapolate
    values = rng.standard_normal(40)
    values[rng.choice(keep[1:-1], size=3, replace=False)] = np.nan  # missing values too
    lines = "".join(f"{dates[i].date()},{'' if np.isnan(values[i]) else repr(float(values[i]))}\n"
                    for i in keep)
    ours = TimeSeries.from_csv(_csv(tmp_path, "daily.csv", lines), fill="interpolate", freq="1D")
    frame = pd.Series(values[keep], index=dates[keep]).asfreq("D").interpolate(method="time")
    np.testing.assert_allclose(ours.values.ravel(), frame.to_numpy(), rtol=1e-12)
    assert len(ours) == 40
