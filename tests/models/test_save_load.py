"""rnnkit.save / rnnkit.load rebuild every task model from its directory alone: the
vocabulary, class and tag names come back with the weights."""

import torch

import rnnkit
from rnnkit.data import Vocabulary
from rnnkit.models import LanguageModel, SequenceClassifier, SequenceRegressor, SequenceTagger


def test_language_model_generates_the_same_text_after_load(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary.build("first citizen: before we proceed any further", level="char")
    model = LanguageModel(vocabulary=vocab, hidden_size=8, num_layers=2, tie_weights=True)
    rnnkit.save(model, tmp_path / "lm")
    del vocab  # nothing but the directory
    loaded = rnnkit.load(tmp_path / "lm")
    assert isinstance(loaded, LanguageModel) and not loaded.training
    assert loaded.generate("first", 40, top_p=0.9, seed=3) == model.generate("first", 40,
                                                                               top_p=0.9, seed=3)


def test_classifier_regressor_tagger_round_trip(tmp_path):
    torch.manual_seed(1)
    x, lengths = torch.randn(3, 5, 2), torch.tensor([5, 1, 3])
    models = {
        "classifier": SequenceClassifier(2, class_names=["up", "down"], hidden_size=4,
                                         cell="nas", bidirectional=True),
        "regressor": SequenceRegressor(2, 3, hidden_size=4, cell="gru", num_layers=2),
        "tagger": SequenceTagger(2, tag_names=["A", "B", "C"], hidden_size=4, cell="min_gru"),
    }
    for name, model in models.items():
        model.eval()
        rnnkit.save(model, tmp_path / name)
        loaded = rnnkit.load(tmp_path / name)
        assert type(loaded) is type(model)
        torch.testing.assert_close(loaded(x, lengths), model(x, lengths), atol=0, rtol=0)
    assert rnnkit.load(tmp_path / "classifier").predict_names(x, lengths) == \
        models["classifier"].predict_names(x, lengths)
