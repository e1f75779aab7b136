"""Toy sequence-to-sequence tasks generated locally: date normalisation, addition, reversal.

Each task draws ``(source, target)`` string pairs from a seeded :class:`random.Random`, so the
same seed gives the same data on every machine, with no download:

* ``"dates"``: a date written in one of many human formats (``"3 May 1997"``, ``"May 3,
  1997"``, ``"03/05/97"``, ``"Saturday, May 3, 1997"``, ``"1997.05.03"``, ``"3rd of may
  1997"``, lower- and upper-case variants, ...) -> ISO 8601 ``"1997-05-03"``. Dates lie in
  1950-01-01 .. 2049-12-31, so a two-digit year is unambiguous (50-99 -> 19xx, 00-49 -> 20xx);
  numeric day/month formats put the day first (``03/05/97`` is the 3rd of May).
* ``"addition"``: ``"535+61"`` -> ``"596"``; each operand is uniform over ``0 ..
  10**max_digits - 1`` (Keras' ``addition_rnn`` draws the number of digits first: see ``draw``).
* ``"reversal"``: ``"abcde"`` -> ``"edcba"`` over lower-case letters, ``min_length`` to
  ``max_length`` characters.

Vocabularies are character-level :class:`~rnnkit.data.Vocabulary` objects whose first ids are
the specials ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3, followed by every
character the task's generator can write (so they do not depend on the seed or the sizes).

:func:`make_splits` draws training, validation and test pairs that share no *sample key*:
the underlying value (dates: the calendar date, so a held-out date is never seen in any
format; addition: the operand pair; reversal: the sequence). :class:`Seq2SeqDataset` encodes
pairs, and :class:`Seq2SeqCollate` pads a batch into what :class:`rnnkit.Trainer` feeds a
:class:`~rnnkit.models.Seq2Seq`: ``{"inputs": (source (B, S), target_in (B, T)), "lengths":
(B,), "target": target_out (B, T)}`` with ``target_in = <bos> + target`` (``<pad>``-padded)
and ``target_out = target + <eos>`` (padded with -100, which the loss and metrics ignore).

Example:
    >>> task = make_task("addition")
    >>> splits = make_splits(task, num_train=100, num_validation=10, num_test=10, seed=0)
    >>> len(splits.train), len(splits.test)
    (100, 10)
    >>> source, target = splits.train[0]
    >>> target == str(eval(source))
    True
    >>> dataset = Seq2SeqDataset([("12+5", "17"), ("3+4", "7")], task.source_vocabulary,
    ...                          task.target_vocabulary)
    >>> batch = Seq2SeqCollate()([dataset[0], dataset[1]])
    >>> batch["lengths"].tolist(), batch["target"].tolist()
    ([4, 3], [[5, 11, 2], [11, 2, -100]])
"""

from __future__ import annotations

import datetime
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnkit.data._checks import int_arg
from rnnkit.data.text import Vocabulary

__all__ = [
    "BOS",
    "BOS_ID",
    "EOS",
    "EOS_ID",
    "IGNORE_INDEX",
    "PAD_ID",
    "SPECIALS",
    "TASK_NAMES",
    "UNK_ID",
    "UnknownCharactersError",
    "Seq2SeqCollate",
    "Seq2SeqDataset",
    "Seq2SeqSplits",
    "Seq2SeqTask",
    "char_vocabulary",
    "encode_text",
    "make_splits",
    "make_task",
]

BOS, EOS = "<bos>", "<eos>"
#: the special tokens, in id order: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3
SPECIALS: tuple[str, ...] = ("<pad>", BOS, EOS, "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
#: target padding that never counts (torch's ``ignore_index``)
IGNORE_INDEX = -100
TASK_NAMES = ("dates", "addition", "reversal")


class UnknownCharactersError(ValueError):
    """A text holds characters outside a vocabulary (the message names them)."""


def char_vocabulary(characters: Iterable[str]) -> Vocabulary:
    """A character vocabulary: the four :data:`SPECIALS` first, then ``characters`` sorted."""
    chars = sorted(set(characters))
    for c in chars:
        if len(c) != 1:
            raise ValueError(f"char_vocabulary needs single characters, got {c!r}")
    return Vocabulary(chars, level="char", specials=SPECIALS)


def encode_text(vocabulary: Vocabulary, text: str, *, unknown: str = "error",
                what: str = "source") -> list[int]:
    """The ids of ``text``'s characters. A character outside ``vocabulary`` is an
    :class:`UnknownCharactersError` naming every such character (``unknown="error"``), or
    reads as ``<unk>`` (``unknown="map"``)."""
    if unknown not in ("error", "map"):
        raise ValueError(f"unknown must be 'error' or 'map', got {unknown!r}")
    if not isinstance(text, str):
        raise TypeError(f"the {what} must be a str, got {type(text).__name__} ({text!r})")
    if unknown == "error":
        missing = sorted({c for c in vocabulary.tokenize(text) if c not in vocabulary.stoi})
        if missing:
            raise UnknownCharactersError(
                f"{text!r}: {len(missing)} character(s) outside the {what} vocabulary: "
                f"{', '.join(repr(c) for c in missing)} (unknown='map' reads them as <unk>)")
    return vocabulary.encode(text)


# ----------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class Seq2SeqTask:
    """A generator of ``(source, target)`` pairs and its two character vocabularies.

    ``draw(rng)`` returns ``(key, source, target)``: the key identifies the underlying sample
    (splits never share one). ``num_keys`` is how many distinct keys exist (splits larger
    than that are refused). ``max_source_length`` / ``max_target_length`` bound the strings
    in characters (without ``<bos>``/``<eos>``).
    """

    name: str
    draw: Callable[[random.Random], tuple[Any, str, str]] = field(repr=False)
    source_characters: str = field(repr=False)
    target_characters: str = field(repr=False)
    num_keys: int
    max_source_length: int
    max_target_length: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def source_vocabulary(self) -> Vocabulary:
        return char_vocabulary(self.source_characters)

    @property
    def target_vocabulary(self) -> Vocabulary:
        return char_vocabulary(self.target_characters)

    def pairs(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` pairs drawn with ``seed`` (keys may repeat; :func:`make_splits` dedups)."""
        rng = random.Random(seed)
        return [self.draw(rng)[1:] for _ in range(int_arg("n", n))]


# dates -------------------------------------------------------------------------------------
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_FIRST_DATE = datetime.date(1950, 1, 1)
_LAST_DATE = datetime.date(2049, 12, 31)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date_fields(date: datetime.date) -> dict[str, str]:
    month, weekday = _MONTHS[date.month - 1], _WEEKDAYS[date.weekday()]
    return {"d": str(date.day), "dd": f"{date.day:02d}", "D": _ordinal(date.day),
            "m": str(date.month), "mm": f"{date.month:02d}", "MON": month[:3],
            "MONTH": month, "yy": f"{date.year % 100:02d}", "yyyy": str(date.year),
            "WD": weekday[:3], "WEEKDAY": weekday}


#: the human formats of the dates task (``str.format`` fields of :func:`_date_fields`)
DATE_FORMATS: tuple[str, ...] = (
    "{d} {MONTH} {yyyy}", "{dd} {MONTH} {yyyy}", "{d} {MON} {yyyy}", "{d} {MONTH}, {yyyy}",
    "{MONTH} {d}, {yyyy}", "{MONTH} {d} {yyyy}", "{MON} {d}, {yyyy}", "{MON} {dd} {yyyy}",
    "{WEEKDAY}, {MONTH} {d}, {yyyy}", "{WD}, {d} {MON} {yyyy}", "{WEEKDAY} {d} {MONTH} {yyyy}",
    "{dd}/{mm}/{yy}", "{dd}/{mm}/{yyyy}", "{d}/{m}/{yy}", "{dd}.{mm}.{yyyy}", "{d}.{m}.{yy}",
    "{yyyy}.{mm}.{dd}", "{yyyy}/{mm}/{dd}", "{yyyy}-{mm}-{dd}", "{yyyy}{mm}{dd}",
    "{dd}-{MON}-{yyyy}", "{dd}-{MON}-{yy}", "{D} {MONTH} {yyyy}", "{MONTH} {D}, {yyyy}",
    "the {D} of {MONTH} {yyyy}", "{yyyy} {MONTH} {d}",
)


def format_date(date: datetime.date, template: str, case: str = "as is") -> str:
    """``date`` written with one of :data:`DATE_FORMATS`, ``case`` ``"as is"`` (month and
    day names capitalised), ``"lower"`` or ``"upper"``."""
    text = template.format(**_date_fields(date))
    return {"as is": text, "lower": text.lower(), "upper": text.upper()}[case]


def _draw_date(rng: random.Random) -> tuple[Any, str, str]:
    span = (_LAST_DATE - _FIRST_DATE).days
    date = _FIRST_DATE + datetime.timedelta(days=rng.randint(0, span))
    template = rng.choice(DATE_FORMATS)
    case = rng.choices(("as is", "lower", "upper"), weights=(3, 1, 1))[0]
    return date, format_date(date, template, case), date.isoformat()


def _date_characters() -> str:
    words = " ".join(_MONTHS + _WEEKDAYS) + " st nd rd th the of"
    return "".join(sorted(set(words.lower() + words.upper() + words + string.digits + "/.,-")))


def _date_task() -> Seq2SeqTask:
    longest = max(len(format_date(datetime.date(2000, 9, 27), f)) for f in DATE_FORMATS)
    return Seq2SeqTask("dates", _draw_date, _date_characters(), string.digits + "-",
                       num_keys=(_LAST_DATE - _FIRST_DATE).days + 1,
                       max_source_length=longest + 1, max_target_length=10)


# addition ----------------------------------------------------------------------------------
def _addition_task(max_digits: int) -> Seq2SeqTask:
    max_digits = int_arg("max_digits", max_digits)

    def draw(rng: random.Random) -> tuple[Any, str, str]:
        # uniform over the operand pairs: drawing the number of digits first (Keras'
        # addition_rnn) makes the 100 one-digit pairs a ninth of the stream, so a held-out
        # split of distinct pairs would take nearly all of them away from training
        a, b = rng.randrange(10 ** max_digits), rng.randrange(10 ** max_digits)
        return (a, b), f"{a}+{b}", str(a + b)

    return Seq2SeqTask("addition", draw, string.digits + "+", string.digits,
                       num_keys=10 ** (2 * max_digits), max_source_length=2 * max_digits + 1,
                       max_target_length=max_digits + 1, options={"max_digits": max_digits})


# reversal ----------------------------------------------------------------------------------
def _reversal_task(min_length: int, max_length: int) -> Seq2SeqTask:
    min_length, max_length = int_arg("min_length", min_length), int_arg("max_length", max_length)
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) must not exceed max_length ({max_length})")
    letters = string.ascii_lowercase

    def draw(rng: random.Random) -> tuple[Any, str, str]:
        text = "".join(rng.choice(letters) for _ in range(rng.randint(min_length, max_length)))
        return text, text, text[::-1]

    return Seq2SeqTask("reversal", draw, letters, letters,
                       num_keys=sum(26 ** n for n in range(min_length, max_length + 1)),
                       max_source_length=max_length, max_target_length=max_length,
                       options={"min_length": min_length, "max_length": max_length})


def make_task(name: str, *, max_digits: int = 3, min_length: int = 3,
              max_length: int = 12) -> Seq2SeqTask:
    """The task ``name`` (one of :data:`TASK_NAMES`). ``max_digits``: digits per operand of
    ``"addition"``; ``min_length``/``max_length``: characters of ``"reversal"``'s sequences."""
    if name == "dates":
        return _date_task()
    if name == "addition":
        return _addition_task(max_digits)
    if name == "reversal":
        return _reversal_task(min_length, max_length)
    import difflib

    hint = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
    raise ValueError(f"unknown seq2seq task {name!r}" + (f" (did you mean {hint[0]!r}?)"
                                                          if hint else "")
                     + f"; tasks: {', '.join(TASK_NAMES)}")


# ----------------------------------------------------------------------------- splits
@dataclass
class Seq2SeqSplits:
    """Training, validation and test pairs of one task; no two splits share a sample key."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]


def make_splits(task: Seq2SeqTask, num_train: int, num_validation: int = 0,
                num_test: int = 0, seed: int = 0) -> Seq2SeqSplits:
    """Draw the three splits with ``seed``. The held-out splits are drawn first, each with
    distinct keys; training pairs are then drawn, rejecting held-out keys (training pairs may
    repeat a key among themselves, as a generator's stream does: a date in two formats)."""
    num_train = int_arg("num_train", num_train)
    num_validation = int_arg("num_validation", num_validation, minimum=0)
    num_test = int_arg("num_test", num_test, minimum=0)
    held_out = num_validation + num_test
    if held_out >= task.num_keys:
        raise ValueError(f"the {task.name} task has {task.num_keys} distinct samples: too few "
                         f"for {held_out} held-out ones plus training data")
    rng = random.Random(seed)
    keys: set[Any] = set()
    held: list[tuple[str, str]] = []
    while len(held) < held_out:
        key, source, target = task.draw(rng)
        if key not in keys:
            keys.add(key)
            held.append((source, target))
    # a task whose keys are nearly all held out would loop for ever: bound the attempts
    train: list[tuple[str, str]] = []
    attempts, limit = 0, 100 * num_train + 1000
    while len(train) < num_train:
        attempts += 1
        if attempts > limit:
            raise ValueError(f"the {task.name} task cannot give {num_train} training samples "
                             f"outside its {held_out} held-out ones (only {task.num_keys} "
                             "distinct samples exist)")
        key, source, target = task.draw(rng)
        if key not in keys:
            train.append((source, target))
    return Seq2SeqSplits(train=train, validation=held[:num_validation],
                         test=held[num_validation:])


# ----------------------------------------------------------------------------- torch data
class Seq2SeqDataset(torch.utils.data.Dataset):
    """``(source, target)`` string pairs as id tensors: item ``i`` is ``(source (S,) int64,
    target (T,) int64)``, without ``<bos>``/``<eos>`` (:class:`Seq2SeqCollate` adds them).

    A source character outside ``source_vocabulary`` is an :class:`UnknownCharactersError`
    naming it, raised here at construction (``unknown="map"``: it reads as ``<unk>``); a
    target character outside ``target_vocabulary`` is always an error, and so is an empty
    source (an encoder needs one step).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], source_vocabulary: Vocabulary,
                 target_vocabulary: Vocabulary, *, unknown: str = "error") -> None:
        self.pairs = list(pairs)
        self.source_vocabulary = source_vocabulary
        self.target_vocabulary = target_vocabulary
        self._sources, self._targets = [], []
        for i, pair in enumerate(self.pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"pair {i} must be (source, target) strings, got {pair!r}")
            source, target = pair
            if not isinstance(source, str) or not source:
                raise ValueError(f"pair {i}: the source must be a non-empty str, got {source!r}")
            self._sources.append(torch.tensor(
                encode_text(source_vocabulary, source, unknown=unknown, what="source"),
                dtype=torch.int64))
            self._targets.append(torch.tensor(
                encode_text(target_vocabulary, target, what="target"), dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sources[i], self._targets[i]


class Seq2SeqCollate:
    """Pad ``(source, target)`` id pairs into a batch-major dict the trainer reads:

    * ``inputs``: ``(source (B, S), target_in (B, T))`` -- the model's positional inputs;
      ``target_in`` is ``<bos>`` + target, padded with ``pad_id``;
    * ``lengths``: ``(B,)`` int64 source lengths;
    * ``target``: ``target_out (B, T)`` = target + ``<eos>``, padded with -100.
    """

    def __init__(self, pad_id: int = PAD_ID, bos_id: int = BOS_ID,
                 eos_id: int = EOS_ID) -> None:
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)

    def __call__(self, items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        if not items:
            raise ValueError("Seq2SeqCollate got an empty batch")
        b = len(items)
        lengths = torch.tensor([len(s) for s, _ in items], dtype=torch.int64)     # (B,)
        steps = max(len(t) for _, t in items) + 1                                 # T
        source = torch.full((b, int(lengths.max())), self.pad_id, dtype=torch.int64)  # (B, S)
        target_in = torch.full((b, steps), self.pad_id, dtype=torch.int64)        # (B, T)
        target_out = torch.full((b, steps), IGNORE_INDEX, dtype=torch.int64)      # (B, T)
        for row, (src, tgt) in enumerate(items):
            n = len(tgt)
            source[row, : len(src)] = src
            target_in[row, 0] = self.bos_id
            target_in[row, 1: n + 1] = tgt
            target_out[row, :n] = tgt
            target_out[row, n] = self.eos_id
        return {"inputs": (source, target_in), "lengths": lengths, "target": target_out}
