"""Text: character and word vocabularies, language-model windows, stateful BPTT batches.

Symbols: ``N`` tokens in the corpus, ``L`` window (BPTT) length, ``B`` batch size (parallel
streams), ``T = N // B`` steps per stream.

Example:
    >>> vocab = Vocabulary.build(["hello world"], level="char")
    >>> vocab.decode(vocab.encode("hold"))
    'hold'
    >>> ids = vocab.encode("hello world")
    >>> data = batchify(ids, batch_size=2)          # (T, B) = (5, 2)
    >>> [tuple(x.shape) for x, y in bptt_batches(data, bptt=3)]
    [(3, 2), (1, 2)]
"""

from __future__ import annotations

import json
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from rnnkit._files import atomic_write_bytes
from rnnkit.data._checks import int_arg

__all__ = [
    "PAD",
    "UNK",
    "LanguageModelDataset",
    "StatefulBatches",
    "Vocabulary",
    "batchify",
    "bptt_batches",
]

PAD = "<pad>"
UNK = "<unk>"
_WORD = re.compile(r"\S+")


def _tokenize(text: str, level: str, lower: bool) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} ({text!r})")
    if lower:
        text = text.lower()
    if level == "char":
        return list(text)
    if level == "word":
        return _WORD.findall(text)
    raise ValueError(f"level must be 'char' or 'word', got {level!r}")


class Vocabulary:
    """A token <-> id mapping with padding (id 0) and unknown (id 1) tokens.

    Args:
        tokens: the ordinary tokens, in id order (after the specials).
        level: ``"char"`` splits text into characters and joins with ``""``; ``"word"``
            splits on whitespace and joins with ``" "``.
        lower: lower-case text before tokenising.
        specials: tokens placed first; must include ``<pad>`` and ``<unk>``.

    Unknown tokens encode to ``unk_id``; ``decode`` drops padding unless told otherwise.

    Example:
        >>> v = Vocabulary.build(["the cat", "the dog"], level="word")
        >>> v.encode("the bird")
        [2, 1]
        >>> v.decode([2, 3, 0, 0])
        'the cat'
    """

    def __init__(self, tokens: Iterable[str], level: str = "char", lower: bool = False,
                 specials: Sequence[str] = (PAD, UNK)) -> None:
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if isinstance(tokens, str):
            raise TypeError(f"tokens must be a list of token strings, got the str {tokens!r} "
                            "(use Vocabulary.build(texts) to count the tokens of a text)")
        if PAD not in specials or UNK not in specials:
            raise ValueError(f"specials must include {PAD!r} and {UNK!r}, got {list(specials)}")
        self.level = level
        self.lower = bool(lower)
        self.specials = list(specials)
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for tok in [*self.specials, *tokens]:
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"tokens must be non-empty strings, got {tok!r}")
            if tok in self.stoi:
                if tok in self.specials:
                    continue
                raise ValueError(f"duplicate token {tok!r} in the vocabulary")
            self.stoi[tok] = len(self.itos)
            self.itos.append(tok)
        self.pad_id = self.stoi[PAD]
        self.unk_id = self.stoi[UNK]

    @classmethod
    def build(cls, texts: Iterable[str] | str, level: str = "char", min_freq: int = 1,
              max_size: int | None = None, lower: bool = False,
              specials: Sequence[str] = (PAD, UNK)) -> Vocabulary:
        """Count tokens in ``texts``; keep those seen ``min_freq`` times, most frequent first
        (ties in first-seen order), at most ``max_size`` ordinary tokens."""
        if isinstance(texts, str):
            texts = [texts]
        min_freq = int_arg("min_freq", min_freq)
        if max_size is not None:
            max_size = int_arg("max_size", max_size)
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a str or an iterable of str, got "
                            f"{type(texts).__name__}")
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__} "
                                f"({text!r})")
            counts.update(_tokenize(text, level, lower))
        # Counter.most_common keeps first-seen order among equal counts: deterministic ids
        kept = [t for t, c in counts.most_common() if c >= min_freq and t not in specials]
        if max_size is not None:
            kept = kept[:max_size]
        if not kept:
            found = (f"no token occurs min_freq={min_freq} times" if counts
                     else "the texts hold no tokens (empty or whitespace only)")
            raise ValueError(f"Vocabulary.build: {found}, so the vocabulary would hold only the "
                             f"special tokens and every id would be <unk>")
        return cls(kept, level=level, lower=lower, specials=specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.unk_id)

    def tokenize(self, text: str) -> list[str]:
        return _tokenize(text, self.level, self.lower)

    def encode(self, text: str, as_tensor: bool = False) -> list[int] | torch.Tensor:
        """Token ids of ``text``; unknown tokens become ``unk_id``."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__} ({text!r})")
        ids = [self.stoi.get(t, self.unk_id) for t in self.tokenize(text)]
        return torch.tensor(ids, dtype=torch.int64) if as_tensor else ids

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_pad: bool = True) -> str:
        """Text from ids (``<unk>`` stays visible); raises on ids outside the vocabulary."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"decode needs integer ids, got {i!r} ({type(i).__name__})")
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise IndexError(f"id {i} out of range for a vocabulary of {len(self.itos)}")
            if skip_pad and i == self.pad_id:
                continue
            out.append(self.itos[i])
        return ("" if self.level == "char" else " ").join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "rnnkit.Vocabulary", "version": 1, "level": self.level,
                "lower": self.lower, "specials": self.specials,
                "tokens": self.itos[len(self.specials):]}

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"cannot save the vocabulary to {path}: the folder {folder} "
                                    "does not exist")
        data = json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a vocabulary JSON file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != "rnnkit.Vocabulary":
            raise ValueError(f"{path}: not an rnnkit vocabulary (missing format "
                             "'rnnkit.Vocabulary')")
        expected = {"tokens": list, "level": str, "lower": bool, "specials": list}
        for key, kind in expected.items():
            if key not in d:
                raise ValueError(f"{path}: the vocabulary file has no {key!r} entry (keys: "
                                 f"{sorted(d)})")
            if not isinstance(d[key], kind):
                raise ValueError(f"{path}: {key!r} must be a {kind.__name__}, got "
                                 f"{type(d[key]).__name__}")
        try:
            return cls(d["tokens"], level=d["level"], lower=d["lower"], specials=d["specials"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return f"Vocabulary(level={self.level!r}, size={len(self)})"


def _as_ids(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 token ids; floats are refused, never truncated."""
    if isinstance(ids, torch.Tensor):
        t = ids
    else:
        try:
            t = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"token ids must be a 1-D list or tensor of ints: {e}") from None
        if t.numel() == 0:
            t = t.to(torch.int64)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"token ids must be integers, got dtype {t.dtype} (a float id would be "
                        "truncated)")
    if t.dim() != 1:
        raise ValueError(f"token ids must be 1-D (N,), got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        i = int(torch.argmin(t))
        raise ValueError(f"token ids must be >= 0, got ids[{i}] = {int(t[i])}")
    return t.to(torch.int64)


class LanguageModelDataset(torch.utils.data.Dataset):
    """``(input (L,), target (L,))`` windows where ``target[t] == input[t + 1]`` in the corpus.

    Window ``i`` starts at token ``i * stride`` (default ``stride = seq_len``: disjoint windows).

    Example:
        >>> ds = LanguageModelDataset(list(range(10)), seq_len=4)
        >>> len(ds), ds[1]
        (2, (tensor([4, 5, 6, 7]), tensor([5, 6, 7, 8])))
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, seq_len: int,
                 stride: int | None = None) -> None:
        self.ids = _as_ids(ids)  # (N,)
        self.seq_len = int_arg("seq_len", seq_len)
        self.stride = self.seq_len if stride is None else int_arg("stride", stride)
        if len(self.ids) < self.seq_len + 1:
            raise ValueError(f"{len(self.ids)} tokens are too few for one window of "
                             f"seq_len={seq_len} plus its next-token target")

    def __len__(self) -> int:
        return (len(self.ids) - self.seq_len - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"window index must be an int, got {type(i).__name__} ({i!r})")
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        start = (i % n) * self.stride
        chunk = self.ids[start: start + self.seq_len + 1]  # (L + 1,)
        return chunk[:-1], chunk[1:]


def batchify(ids: Sequence[int] | torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the corpus into ``B`` contiguous streams, as the PyTorch word_language_model example.

    Returns ``(T, B)``: column ``b`` is tokens ``[b*T, (b+1)*T)``; the last ``N mod B`` tokens
    are dropped. Row ``t`` of consecutive BPTT windows continues row ``t`` of the previous one,
    so the hidden state can be carried across batches.
    """
    t = _as_ids(ids)
    batch_size = int_arg("batch_size", batch_size)
    steps = len(t) // batch_size
    if steps < 2:
        raise ValueError(f"{len(t)} tokens are too few for batch_size={batch_size} "
                         "(each stream needs at least 2 tokens)")
    return t[: steps * batch_size].view(batch_size, steps).t().contiguous()  # (T, B)


def bptt_batches(data: torch.Tensor, bptt: int, batch_first: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(input, target)`` windows of ``data (T, B)``; target is input shifted by one.

    Yields ``(L, B)`` pairs (``(B, L)`` with ``batch_first``); the last window is shorter.
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be the (T, B) tensor from batchify, got "
                        f"{type(data).__name__}")
    if data.dim() != 2:
        raise ValueError(f"data must be (T, B) from batchify, got shape {tuple(data.shape)}")
    bptt = int_arg("bptt", bptt)
    for i in range(0, data.size(0) - 1, bptt):
        n = min(bptt, data.size(0) - 1 - i)
        x, y = data[i: i + n], data[i + 1: i + 1 + n]  # (L, B)
        yield (x.t().contiguous(), y.t().contiguous()) if batch_first else (x, y)


class StatefulBatches:
    """Re-iterable truncated-BPTT batches over a token corpus (see :func:`batchify`).

    Each epoch yields the same contiguous ``(input, target)`` windows; carry (and detach) the
    recurrent state from one window to the next. ``random_offset`` shifts the start of every
    epoch by up to ``bptt - 1`` tokens (seeded by ``seed + epoch``) so window boundaries vary.

    Example:
        >>> batches = StatefulBatches(list(range(21)), batch_size=2, bptt=4)
        >>> [tuple(x.shape) for x, _ in batches]
        [(4, 2), (4, 2), (1, 2)]
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, batch_size: int, bptt: int,
                 batch_first: bool = False, random_offset: bool = False, seed: int = 0) -> None:
        self.ids = _as_ids(ids)
        self.batch_size = int_arg("batch_size", batch_size)
        self.bptt = int_arg("bptt", bptt)
        self.batch_first = batch_first
        self.random_offset = random_offset
        self.seed = int_arg("seed", seed, minimum=0)
        self.epoch = 0
        self.data = batchify(self.ids, self.batch_size)  # (T, B)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-(self.data.size(0) - 1) // self.bptt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.data
        if self.random_offset and self.bptt > 1:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            offset = int(torch.randint(0, self.bptt, (1,), generator=g))
            if offset:
                data = batchify(self.ids[offset:], self.batch_size)
        return bptt_batches(data, self.bptt, self.batch_first)
