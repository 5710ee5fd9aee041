"""Vector encodings (protocol/encoding.py): payload size, encode and decode time, error.

    python -m benchmarks.bench_encoding              # d = 1,000,000 values
    python -m benchmarks.bench_encoding --dim 100000

The vector is a gradient-like one (normal values over several magnitudes). Each time is the
best of several runs (the machine is shared). The error is the largest |decoded - x|
relative to max |x|.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from protocol.encoding import ENCODINGS, VectorEncoding

REPEATS = 7


def best_ms(function: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = (rng.standard_normal(args.dim) * 10.0 ** rng.uniform(-4, 0, args.dim)).astype(np.float32)
    print(f"d = {args.dim:,} float32 values, seed {args.seed}, best of {REPEATS}")
    print(f"{'encoding':8} {'bytes':>10} {'f32/this':>8} {'encode ms':>10} {'decode ms':>10} error")
    f32_bytes = None
    for name in ENCODINGS:
        codec = VectorEncoding(name, args.dim, np.dtype("<f4"))
        payload = codec.encode(x)
        f32_bytes = f32_bytes or len(payload)
        decoded = codec.decode(payload)
        error = float(np.max(np.abs(decoded - x)) / np.max(np.abs(x)))
        encode_ms = best_ms(lambda codec=codec: codec.encode(x))
        decode_ms = best_ms(lambda codec=codec, payload=payload: codec.decode(payload))
        print(
            f"{name:8} {len(payload):>10,} {f32_bytes / len(payload):>8.3f} "
            f"{encode_ms:>10.2f} {decode_ms:>10.2f} {error:.2e}"
        )


if __name__ == "__main__":
    main()
