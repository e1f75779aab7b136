"""rnnkit.models: task models built on any rnnkit cell (see docs/models.md)."""

# --- models (owner: models) ---
# isort: split
from rnnkit.models.backbone import CELL_NAMES, Backbone  # noqa: E402, F401
from rnnkit.models.classifier import SequenceClassifier  # noqa: E402, F401
from rnnkit.models.language_model import (  # noqa: E402, F401
    LanguageModel,
    bits_per_character,
    next_token_distribution,
    perplexity,
)
from rnnkit.models.regressor import SequenceRegressor  # noqa: E402, F401
from rnnkit.models.tagger import SequenceTagger  # noqa: E402, F401

# --- forecaster (owner: forecaster) ---
# isort: split
from rnnkit.models.forecaster import Forecaster  # noqa: E402, F401

# --- decoding (owner: s2s-decode) ---
# isort: split
from rnnkit.models.decoding import (  # noqa: E402, F401
    BeamSearchDecoder,
    Hypotheses,
    beam_search,
    greedy_decode,
    sample_decode,
    tile_batch,
)

# --- seq2seq (owner: s2s-model) ---
# isort: split
from rnnkit.models.seq2seq import Decoder, Encoded, Encoder, Seq2Seq  # noqa: E402, F401

# --- image to sequence (owner: img2seq) ---
# isort: split
from rnnkit.models.image_to_sequence import (  # noqa: E402, F401
    ImageEncoded,
    ImageEncoder,
    ImageToSequence,
)

# --- ctc decoding (owner: ctcdecode) ---
# isort: split
from rnnkit.models.ctc_decoding import (  # noqa: E402, F401
    CharNGramLM,
    CTCHypothesis,
    LanguageModelScorer,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
)

# --- recognizer (owner: ctc) ---
# isort: split
from rnnkit.models.recognizer import (  # noqa: E402, F401
    RecognizerOutput,
    SequenceRecognizer,
    ctc_loss,
)
