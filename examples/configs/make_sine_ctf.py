"""Write the CTF files of examples/configs/cntk_ctf_regression.toml: a noisy sine wave cut
into sequences of 5 to 15 steps (stream ``features``, one value per step), each with the next
value as its target (stream ``target``), as CNTK's time-series tutorial (CNTK 106) lays out
its data. Run it again to regenerate the files; the seed fixes their content.

    python examples/configs/make_sine_ctf.py
"""

from pathlib import Path

import numpy as np

from rnnkit.data import write_ctf

HERE = Path(__file__).resolve().parent / "data"


def sequences(count: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(count):
        steps = int(rng.integers(5, 16))
        start = rng.uniform(0, 2 * np.pi)
        t = start + 0.3 * np.arange(steps + 1)
        wave = np.sin(t) + 0.05 * rng.standard_normal(steps + 1)
        out.append({"features": wave[:steps, None].round(4),
                    "target": [[round(float(wave[steps]), 4)]]})
    return out


def main() -> None:
    rng = np.random.default_rng(106)
    HERE.mkdir(exist_ok=True)
    write_ctf(HERE / "sine_train.ctf", sequences(400, rng))
    write_ctf(HERE / "sine_test.ctf", sequences(100, rng))


if __name__ == "__main__":
    main()
