"""examples/char_lm_shakespeare.py end to end on a generated text (CI has no tiny
shakespeare): the LanguageModel beats the add-one bigram baseline on the validation split,
the figures are printed, the saved model generates from the prompt; a missing file is one
clear message."""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import rnnkit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "char_lm_shakespeare.py"
WORDS = ["the", "king", "queen", "shall", "speak", "my", "lord", "thou", "art", "noble",
         "and", "good", "night", "sweet", "prince", "what", "light", "through", "yonder"]


def _play(lines: int = 900, seed: int = 0) -> str:
    """Speeches of random words: a character bigram cannot spell the words, an LSTM can."""
    rng = random.Random(seed)
    speakers = ["ROMEO", "JULIET", "KING"]
    out = []
    for _ in range(lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        out.append(f"{rng.choice(speakers)}:\n{words}.\n\n")
    return "".join(out)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_example_beats_the_bigram_baseline_and_generates(tmp_path):
    data = tmp_path / "play.txt"
    data.write_text(_play())
    result = _run("--data", str(data), "--hidden", "64", "--batch-size", "16", "--bptt", "32",
                  "--max-updates", "150", "--minutes", "4", "--lr", "0.01", "--length", "60",
                  "--save", str(tmp_path / "model"))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = re.search(r"validation: LSTM (\S+) nats/char = (\S+) bits/char; "
                        r"bigram \(add-one\) (\S+) nats/char = (\S+) bits/char", result.stdout)
    assert figures is not None, result.stdout
    lstm, lstm_bpc, bigram, bigram_bpc = map(float, figures.groups())
    assert lstm < bigram - 0.1 and lstm_bpc < bigram_bpc
    assert re.search(r"trained 150 updates in \d+ s wall, \d+ s CPU \(.+, 1 threads\)",
                     result.stdout)
    assert "--- 'ROMEO:' at temperature 0.8:\nROMEO:" in result.stdout
    model = rnnkit.load(tmp_path / "model")
    text = model.generate("KING:\n", 40, seed=1)
    assert text.startswith("KING:\n") and len(text) == 46


def test_missing_data_is_one_clear_message(tmp_path):
    result = _run("--data", str(tmp_path / "absent.txt"))
    assert result.returncode != 0
    assert "tiny shakespeare not found" in result.stderr and "--data PATH" in result.stderr
    assert "Traceback" not in result.stderr
