"""The task models under rnnkit.Trainer: truncated BPTT over StatefulBatches carries the
LanguageModel's state exactly as a hand-written loop does (PyTorch's word_language_model),
also when layers * directions equals the batch size (the state's batch axis is then found
from torch's layout)."""

import copy

import pytest
import torch

import rnnkit
from rnnkit.data import StatefulBatches, Vocabulary
from rnnkit.models import LanguageModel, SequenceClassifier

TEXT = "the quick brown fox jumps over the lazy dog; " * 6


@pytest.mark.parametrize("cell", ["lstm", "indrnn"])
def test_trainer_tbptt_equals_a_hand_written_loop(cell):
    torch.manual_seed(0)
    vocab = Vocabulary.build(TEXT, level="char")
    model = LanguageModel(vocabulary=vocab, hidden_size=8, num_layers=2, cell=cell)
    twin = copy.deepcopy(model)
    batches = StatefulBatches(vocab.encode(TEXT), batch_size=2, bptt=10, batch_first=True)

    trainer = rnnkit.Trainer(model, loss="sequence_cross_entropy", optimizer="sgd", lr=0.5,
                             verbose=False)
    history = trainer.fit(batches, epochs=2)

    optimizer = torch.optim.SGD(twin.parameters(), lr=0.5)
    for _ in range(2):
        state = None  # every pass starts each stream afresh
        for ids, targets in batches:
            logits, state = twin(ids, state=state)
            state = rnnkit.training.tbptt.detach_state(state)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, got), expected in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=name)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_classifier_trains_on_padded_batches_with_lengths():
    torch.manual_seed(1)
    x, lengths = torch.randn(64, 8, 2), torch.randint(1, 9, (64,))
    first_step_sign = (x[torch.arange(64), 0, 0] > 0).long()  # needs the very first step
    model = SequenceClassifier(2, 2, hidden_size=8, cell="gru", bidirectional=True)
    trainer = rnnkit.Trainer(model, loss="cross_entropy", lr=0.02, verbose=False)
    data = torch.utils.data.TensorDataset(x, lengths, first_step_sign)

    def collate(rows):
        xs, ls, ys = zip(*rows, strict=True)
        return {"x": torch.stack(xs), "lengths": torch.stack(ls), "y": torch.stack(ys)}

    loader = torch.utils.data.DataLoader(data, batch_size=16, collate_fn=collate)
    history = trainer.fit(loader, epochs=8)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
