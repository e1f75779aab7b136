"""Character- or word-level language model: next-token logits at every step, text generation
with temperature, top-k and nucleus (top-p) sampling, perplexity and bits per character.

As PyTorch's ``word_language_model`` example: embedding -> dropout -> recurrent stack ->
dropout -> linear decoder to the vocabulary, optionally tied to the embedding (Press & Wolf
2017, Inan et al. 2017).

Symbols: ``B`` batch, ``T`` time steps, ``V`` vocabulary size, ``E`` embedding size,
``H_out`` the backbone's output features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import Configurable
from rnnkit.data.text import Vocabulary
from rnnkit.errors import ShapeError
from rnnkit.models._common import InputEncoder, as_vocabulary, parameter_dtype, record_argument
from rnnkit.summaries import SummaryMixin

__all__ = [
    "LanguageModel",
    "LanguageModelOutput",
    "bits_per_character",
    "next_token_distribution",
    "perplexity",
]


class LanguageModelOutput(NamedTuple):
    """``(logits (B, T, V), state)``; ``state`` goes back in as ``state=`` to continue."""

    logits: Tensor
    state: Any


def _loss_value(loss: float | Tensor, name: str) -> float:
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: the loss must be a finite mean cross-entropy >= 0 in nats, "
                         f"got {value}")
    return value


def perplexity(loss: float | Tensor) -> float:
    """``exp(loss)`` for a mean cross-entropy ``loss`` in nats per token."""
    return math.exp(_loss_value(loss, "perplexity"))


def bits_per_character(loss: float | Tensor) -> float:
    """``loss / ln 2``: a mean cross-entropy in nats per character in bits per character."""
    return _loss_value(loss, "bits_per_character") / math.log(2.0)


def next_token_distribution(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Sampling probabilities ``(..., V)`` from next-token ``logits (..., V)``.

    Applied in the order of Hugging Face ``transformers``' logits warpers: divide by
    ``temperature``; keep the ``top_k`` largest logits (ties with the k-th kept, as
    ``TopKLogitsWarper``); keep the smallest set of most likely tokens whose probability
    reaches ``top_p`` (``TopPLogitsWarper``: drop the tokens whose ascending cumulative
    probability is at most ``1 - top_p``, never the most likely one); softmax.
    ``temperature=0`` is greedy: all mass on the arg-max (the first one on ties).

    Example:
        >>> probs = next_token_distribution(torch.tensor([0.5, 0.3, 0.15, 0.05]).log(),
        ...                                 top_p=0.7)
        >>> [round(p, 3) for p in probs.tolist()]
        [0.625, 0.375, 0.0, 0.0]
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature >= 0 and math.isfinite(temperature)
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a probability in (0, 1], got {top_p!r}")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)  # (..., 1)
        return torch.zeros_like(logits).scatter_(-1, best, 1.0)
    scores = logits / temperature  # (..., V)
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (..., 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)  # (..., V)
        drop_sorted = cumulative <= (1.0 - top_p)
        drop_sorted[..., -1:] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


class LanguageModel(Configurable, SummaryMixin, nn.Module):
    """Embedding, recurrent stack and a decoder to next-token logits.

    Args:
        vocab_size: ``V``; or leave it out and pass ``vocabulary``.
        vocabulary: a :class:`~rnnkit.data.Vocabulary` (char or word level); kept in the
            config, so a loaded model generates from and to text.
        embedding_dim: ``E`` (default: the hidden size).
        hidden_size, cell, num_layers, cell_options: the recurrent stack (see
            :class:`~rnnkit.models.backbone.Backbone`); a language model reads forwards only.
        dropout: on the embeddings, between stacked layers and before the decoder (as
            PyTorch's ``word_language_model``).
        tie_weights: the decoder uses the embedding matrix (needs ``E == H_out``) and has only
            its own bias.

    Call: ``logits, state = model(ids, lengths=None, state=None)`` with ``ids (B, T)`` int64;
    ``logits (B, T, V)`` predict the token after each step; ``state`` (torch's ``(h_n, c_n)``
    for an LSTM, see :mod:`rnnkit.models.backbone`) continues the text in the next call
    (truncated BPTT).

    Example:
        >>> import torch
        >>> from rnnkit.data import Vocabulary
        >>> vocab = Vocabulary.build("to be or not to be", level="char")
        >>> model = LanguageModel(vocabulary=vocab, hidden_size=16)
        >>> logits, state = model(torch.tensor([vocab.encode("to be")]))
        >>> logits.shape
        torch.Size([1, 5, 9])
        >>> text = model.generate("to ", 10, seed=0)
        >>> len(text), text[:3]
        (13, 'to ')
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        *,
        vocabulary: Any = None,
        embedding_dim: int | None = None,
        hidden_size: int | None = None,
        cell: str | nn.Module = "lstm",
        num_layers: int = 1,
        dropout: float = 0.0,
        tie_weights: bool = False,
        cell_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from rnnkit.models.backbone import Backbone

        owner = type(self).__name__
        vocab = as_vocabulary(owner, vocabulary)
        if vocab is not None:
            record_argument(self, "vocabulary", vocab.to_dict())
        if vocab is None and vocab_size is None:
            raise ValueError(f"{owner}: give vocab_size or vocabulary")
        if embedding_dim is None and isinstance(cell, nn.Module):
            embedding_dim = getattr(cell, "input_size", None)
        self.encoder = InputEncoder(owner, None, vocab_size, embedding_dim, vocab,
                                    default_embedding=hidden_size or 64)
        self.vocab_size: int = self.encoder.vocab_size  # type: ignore[assignment]
        self.backbone = Backbone(self.encoder.features, hidden_size, cell, num_layers,
                                 False, dropout, cell_options)
        self.drop = nn.Dropout(self.backbone.dropout)
        self.tie_weights = bool(tie_weights)
        if self.tie_weights:
            if self.backbone.output_size != self.encoder.features:
                raise ValueError(
                    f"{owner}: tie_weights=True decodes with the embedding matrix, so the "
                    f"recurrent output size ({self.backbone.output_size}) must equal "
                    f"embedding_dim ({self.encoder.features})"
                )
            # No second parameter sharing the embedding's storage: checkpoints stay plain.
            self.decoder = None
            self.decoder_bias = nn.Parameter(torch.zeros(self.vocab_size))
        else:
            self.decoder = nn.Linear(self.backbone.output_size, self.vocab_size)

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The :class:`~rnnkit.data.Vocabulary` the model holds, if any."""
        return self.encoder.vocabulary

    @property
    def embedding(self) -> nn.Embedding:
        return self.encoder.embedding  # type: ignore[return-value]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        """The zero state for ``batch_size`` streams (what ``state=None`` means)."""
        return self.backbone.initial_state(batch_size, device=device)

    def example_input(self, batch_size: int = 2, steps: int = 8) -> Tensor:
        """Random token ids ``(B, T)`` for :meth:`summary`."""
        device = next(self.parameters()).device
        return torch.randint(0, self.vocab_size, (batch_size, steps), device=device)

    def forward(self, ids: Tensor, lengths: Tensor | None = None, state: Any = None
                ) -> LanguageModelOutput:
        """``ids (B, T)`` -> ``LanguageModelOutput(logits (B, T, V), state)``."""
        ids, lengths = self.encoder.check(ids, lengths, parameter_dtype(self))
        embedded = self.drop(self.encoder(ids))  # (B, T, E)
        outputs, state = self.backbone(embedded, lengths=lengths, state=state)  # (B, T, H_out)
        outputs = self.drop(outputs)
        if self.decoder is None:
            logits = F.linear(outputs, self.embedding.weight, self.decoder_bias)  # (B, T, V)
        else:
            logits = self.decoder(outputs)  # (B, T, V)
        return LanguageModelOutput(logits, state)

    perplexity = staticmethod(perplexity)
    bits_per_character = staticmethod(bits_per_character)

    # ------------------------------------------------------------------ generation
    def _prompt_ids(self, prompt: Any) -> tuple[Tensor, str]:
        """``(ids (B, P) int64, kind)`` with kind "text", "list" or "tensor1"/"tensor2"."""
        owner = f"{type(self).__name__}.generate"
        if isinstance(prompt, str):
            vocab = self.vocabulary
            if vocab is None:
                raise TypeError(f"{owner}: a text prompt needs a model built with a "
                                "vocabulary; pass token ids (a list or a tensor) instead")
            tokens = vocab.tokenize(prompt)
            unknown = sorted({t for t in tokens if t not in vocab.stoi})
            if unknown:
                raise ValueError(f"{owner}: the prompt has {len(unknown)} token(s) not in the "
                                 f"vocabulary: {unknown[:8]}")
            if not tokens:
                raise ValueError(f"{owner}: the prompt is empty; give at least one token")
            return torch.tensor([vocab.encode(prompt)], dtype=torch.int64), "text"
        if isinstance(prompt, Tensor):
            if prompt.dim() not in (1, 2):
                raise ShapeError(f"{owner}: a tensor prompt is (P,) or (B, P) token ids, got "
                                 f"shape {tuple(prompt.shape)}")
            kind = f"tensor{prompt.dim()}"
            ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
        elif isinstance(prompt, Sequence):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
                raise TypeError(f"{owner}: a list prompt holds int token ids, got {prompt!r}")
            ids, kind = torch.tensor([list(prompt)], dtype=torch.int64), "list"
        else:
            raise TypeError(f"{owner}: prompt must be a str (with a vocabulary), a list of "
                            f"ids or a tensor, got {type(prompt).__name__}")
        if ids.shape[-1] == 0:
            raise ValueError(f"{owner}: the prompt is empty; give at least one token")
        return ids, kind

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[int] | Tensor,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str | list[int] | Tensor:
        """Continue ``prompt`` by ``length`` sampled tokens (in eval mode, no gradients).

        Args:
            prompt: text (needs a vocabulary), a list of ids, or a tensor ``(P,)`` /
                ``(B, P)`` of ids (B prompts continued together).
            length: tokens to add.
            temperature, top_k, top_p: see :func:`next_token_distribution`;
                ``temperature=0`` or ``top_k=1`` is greedy decoding.
            seed: a private random generator's seed, so the same call gives the same text
                (the global random state is left alone); None draws from torch's global RNG.

        Returns:
            The prompt followed by the new tokens, in the prompt's form: text, a list, or a
            tensor ``(P + length,)`` / ``(B, P + length)``. With a vocabulary the special
            tokens (``<pad>``, ``<unk>``) are never drawn: the text holds real tokens only.
        """
        owner = f"{type(self).__name__}.generate"
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"{owner}: length must be an int >= 0, got {length!r}")
        ids, kind = self._prompt_ids(prompt)
        device = next(self.parameters()).device
        ids = ids.to(device)
        next_token_distribution(torch.zeros(1), temperature, top_k, top_p)  # argument checks
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        greedy = temperature == 0 or top_k == 1
        vocab = self.vocabulary
        banned = None if vocab is None else [vocab.stoi[token] for token in vocab.specials]
        was_training = self.training
        self.eval()
        try:
            logits, state = self(ids)  # (B, P, V)
            new: list[Tensor] = []
            for _ in range(length):
                last = logits[:, -1]  # (B, V)
                if banned is not None:
                    last = last.clone()
                    last[:, banned] = float("-inf")
                if greedy:
                    token = last.argmax(dim=-1)  # (B,)
                else:
                    probs = next_token_distribution(last, temperature, top_k, top_p)  # (B, V)
                    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                new.append(token)
                logits, state = self(token.unsqueeze(1), state=state)  # (B, 1, V)
        finally:
            self.train(was_training)
        added = torch.stack(new, dim=1) if new else ids[:, :0]  # (B, length)
        result = torch.cat([ids, added], dim=1)  # (B, P + length)
        if kind == "text":
            vocab = self.vocabulary
            text = vocab.decode(added[0])  # type: ignore[union-attr]
            joiner = "" if vocab.level == "char" or not text else " "  # type: ignore[union-attr]
            return str(prompt) + joiner + text
        if kind == "list":
            return result[0].tolist()
        return result if kind == "tensor2" else result[0]
