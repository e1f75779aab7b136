"""The trainer's lengths belong to the first input: they must not mask or trim a second input
or a target whose time axis is its own (an encoder-decoder's target), even when the padded
lengths happen to be equal."""

import torch
from torch import nn

from rnnkit.training import Trainer
from rnnkit.training.batches import make_feed


class _TwoInputs(nn.Module):
    """Logits over the steps of the second input (ids), whatever the first input's lengths."""

    lengths_mask_output = False

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 5)

    def forward(self, source, target_in, lengths=None):
        return self.embed(target_in)  # (B, T, 5)


def _data():
    source = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])  # source lengths 2 and 1
    target_in = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 0]])  # T = 4 = S by coincidence
    target_out = torch.tensor([[2, 3, 4, 2], [3, 2, 2, -100]])
    return source, target_in, target_out, torch.tensor([2, 1])


def _oracle_loss(model, target_in, target_out):
    logits = model.embed(target_in)
    return nn.functional.cross_entropy(logits.reshape(-1, 5), target_out.reshape(-1),
                                       ignore_index=-100)


def test_second_input_and_target_are_not_trimmed_to_the_first_inputs_lengths():
    source, target_in, target_out, lengths = _data()
    feed = make_feed(((source, target_in), target_out, lengths), batch_size=2, shuffle=False,
                     seed=0)
    batch = feed.next_batch()
    assert batch.inputs[0].shape == (2, 4) and batch.inputs[1].shape == (2, 4)
    assert torch.equal(batch.inputs[1], target_in) and torch.equal(batch.target, target_out)


def test_single_input_batches_are_still_trimmed():
    x = torch.randn(2, 5, 3)
    feed = make_feed((x, torch.zeros(2, 5, 1), torch.tensor([3, 2])), batch_size=2,
                     shuffle=False, seed=0)
    batch = feed.next_batch()
    assert batch.inputs[0].shape == (2, 3, 3) and batch.target.shape == (2, 3, 1)


def test_a_model_whose_output_does_not_follow_the_lengths_gets_no_mask():
    torch.manual_seed(0)
    source, target_in, target_out, lengths = _data()
    model = _TwoInputs()
    trainer = Trainer(model, loss="sequence_cross_entropy", verbose=False)
    result = trainer.evaluate(((source, target_in), target_out, lengths), batch_size=2)
    # every target position but the -100 one counts (7), not the source-length prefix (3)
    expected = _oracle_loss(model, target_in, target_out)
    assert abs(result["loss"] - float(expected.detach())) < 1e-6


def test_without_the_attribute_the_lengths_still_mask_an_aligned_output():
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 5)

        def forward(self, ids, lengths=None):
            return self.embed(ids)

    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    tags = torch.tensor([[1, 2, 3], [4, 0, 0]])  # padding is tag 0, masked by the lengths
    model = Tagger()
    result = Trainer(model, loss="sequence_cross_entropy", verbose=False).evaluate(
        (ids, tags, torch.tensor([3, 1])), batch_size=2)
    logits = model.embed(ids)
    keep = torch.tensor([[True, True, True], [True, False, False]])
    expected = nn.functional.cross_entropy(logits[keep], tags[keep])
    assert abs(result["loss"] - float(expected.detach())) < 1e-6
