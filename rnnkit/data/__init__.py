"""rnnkit.data: files and batches (the bottom of the data flow: torch and numpy only).

* :mod:`~rnnkit.data.ctf` - the CNTK text format: reader in chunks, writer.
* :mod:`~rnnkit.data.sources` - ``MinibatchSource`` with CNTK semantics, Dataset view.
* :mod:`~rnnkit.data.timeseries` - windows, chronological splits, scalers, calendar features.
* :mod:`~rnnkit.data.text` - vocabularies, language-model windows, stateful BPTT batches.
* :mod:`~rnnkit.data.idx` - IDX files (MNIST, Fashion-MNIST) as sequences of rows.
* :mod:`~rnnkit.data.batching` - padding collate and length-bucketing sampler.
* :mod:`~rnnkit.data.labeled` - ``LabeledSequences``, what every dataset of samples returns.
* :mod:`~rnnkit.data.digit_strings` - strings of real MNIST digits side by side (recognition).

Layout: rnnkit's layers default to time-major ``(T, B, ...)`` like torch, and so does every
helper here that takes ``batch_first`` (``pad_sequences``, ``PadCollate``/``pad_collate``,
``bptt_batches``, ``StatefulBatches``). Datasets return single items ``(T, F)``, which a
``DataLoader``'s default collate stacks batch-major ``(B, T, F)``; ``MinibatchSource`` keeps
CNTK's batch-major ``(B, T, ...)``. Each docstring says which layout it returns.
"""

from rnnkit.data.batching import (
    BucketBatchSampler,
    PadCollate,
    pad_collate,
    pad_sequences,
    padding_fraction,
)
from rnnkit.data.ctf import CTFDeserializer, CTFFormatError, CTFWarning, read_ctf, write_ctf
from rnnkit.data.idx import IDXFormatError, IDXSequenceDataset, find_idx_pair, read_idx, write_idx
from rnnkit.data.labeled import LabeledSequences
from rnnkit.data.sources import (
    DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS,
    FULL_DATA_SWEEP,
    INFINITELY_REPEAT,
    Minibatch,
    MinibatchData,
    MinibatchSource,
    SequenceDataset,
    StreamDef,
    StreamDefs,
    StreamInformation,
)
from rnnkit.data.text import (
    LanguageModelDataset,
    StatefulBatches,
    Vocabulary,
    batchify,
    bptt_batches,
)
from rnnkit.data.timeseries import (
    LogScaler,
    MinMaxScaler,
    ScalerChain,
    StandardScaler,
    TimeSeries,
    WindowDataset,
    WindowedSplits,
    calendar_features,
    chronological_split,
    make_scaler,
    make_windows,
    prepare_windows,
)

__all__ = [
    "DEFAULT_RANDOMIZATION_WINDOW_IN_CHUNKS",
    "FULL_DATA_SWEEP",
    "INFINITELY_REPEAT",
    "BucketBatchSampler",
    "CTFDeserializer",
    "CTFFormatError",
    "CTFWarning",
    "IDXFormatError",
    "IDXSequenceDataset",
    "LabeledSequences",
    "LanguageModelDataset",
    "LogScaler",
    "MinMaxScaler",
    "Minibatch",
    "MinibatchData",
    "MinibatchSource",
    "PadCollate",
    "ScalerChain",
    "SequenceDataset",
    "StandardScaler",
    "StatefulBatches",
    "StreamDef",
    "StreamDefs",
    "StreamInformation",
    "TimeSeries",
    "Vocabulary",
    "WindowDataset",
    "WindowedSplits",
    "batchify",
    "bptt_batches",
    "calendar_features",
    "chronological_split",
    "find_idx_pair",
    "make_scaler",
    "make_windows",
    "pad_collate",
    "pad_sequences",
    "padding_fraction",
    "prepare_windows",
    "read_ctf",
    "read_idx",
    "write_ctf",
    "write_idx",
]
