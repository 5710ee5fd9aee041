"""What the simulator pins so that a seed gives the same digits everywhere it can.

Within one machine and one install a seed repeats a run bit for bit (the trace digest;
DESIGN 6). Across machines three things can still differ, and only the first two can be
set from here:

* **torch's algorithms**: :func:`pin` asks torch for deterministic algorithms (an op with
  no deterministic implementation raises instead of silently varying);
* **thread counts**: every simulated trainer runs torch on one thread
  (``torch_threads = 1``), so a reduction never splits differently with the core count;
  numpy's own kernels are single-threaded;
* **the CPU's kernels**: oneDNN/MKL and numpy pick SIMD kernels by instruction set
  (AVX2, AVX-512, NEON), and a wider kernel sums in another order: the last bits of a
  gradient, then of everything after it, may differ between CPU models. Pinned versions
  (constraints.txt) keep the code the same, not the hardware. A digest reproduces on
  machines with the same instruction set; elsewhere expect figures equal to about the
  third decimal, not digests.
"""

from __future__ import annotations

import os

import torch


def pin() -> None:
    """Deterministic torch algorithms for this process (idempotent).

    On a GPU, cuBLAS needs a fixed workspace for its deterministic mode; the variable is
    set here unless the user set it, before anything initialises CUDA."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
