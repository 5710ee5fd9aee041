"""The local learner: one node's model, momentum and data sampler, behind flat float32 vectors.

The runner drives the paper's LEARN loop (DESIGN 4.3) with four calls per step::

    g = trainer.gradient()                  # local momentum gradient on a fresh batch
    g = <averaging agreement on g>          # R_t rounds of RB-TM
    trainer.apply_gradient(g)               # params -= lr_t * g
    trainer.set_parameters(<agreement on trainer.parameters()>)

Everything crosses this boundary as numpy float32 vectors of length :attr:`Trainer.dim`, so
the protocol never sees torch.

Momentum is **worker-side**, in the exponential-moving-average form
``m_t = beta * m_{t-1} + (1 - beta) * g_t`` (with ``m_1 = g_1``): each node averages its own
recent gradients *before* agreement, which shrinks the variance of honest vectors, hence the
honest diameter a Byzantine node can hide in (El-Mhamdi, Guerraoui, Rouault, "Distributed
momentum for Byzantine-resilient SGD", ICLR 2021). The EMA form keeps ``m`` on the scale of one
gradient, so ``lr`` means the same with or without momentum. The agreed vector is applied to
the parameters; the local momentum buffer is not replaced by it.

Parameters and gradients live in two flat buffers; the module's parameters and their
``.grad`` are views into them, so reading or writing the whole model is one memcpy and
backward accumulates straight into the flat gradient. Buffers (e.g. BatchNorm statistics) are
not part of the vector: they stay local and are only checkpointed.

Randomness is private: the batch sampler has its own ``torch.Generator`` and the model's own
randomness (dropout) runs on a private copy of torch's CPU RNG state, both seeded from
``(seed, node_seed)``, so many trainers in one process (the simulator) do not perturb
one another whatever order they run in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from node.tasks import Task, derive_seed
from node.training import TrainingSettings

#: bumped when the layout of :meth:`Trainer.state_dict` changes
STATE_FORMAT: Final = 1

# Purposes keying the per-node random streams (DESIGN 6).
_PURPOSE_SAMPLER: Final = 1
_PURPOSE_MODEL_RNG: Final = 2


@dataclass(frozen=True, slots=True)
class TrainerStatistics:
    """A snapshot of a trainer's counters."""

    #: calls to :meth:`Trainer.apply_gradient`
    steps: int
    #: mini-batches drawn for gradients
    batches: int
    #: samples held by this node
    samples_local: int
    #: mean loss over the mini-batches of the last gradient (NaN before the first)
    train_loss: float
    #: learning rate the next :meth:`Trainer.apply_gradient` uses
    lr: float


class Trainer:
    """One node's model, momentum buffer and seeded sampler over its part of the train set.

    ``indices`` select this node's samples from ``task.train``; ``label_map`` (an int array of
    length ``task.num_classes``) relabels them, which is how a Byzantine "label flipping" node
    is built (e.g. ``y -> num_classes - 1 - y``). ``seed`` is the run's: with ``node_seed`` it
    seeds this node's sampler and model randomness.
    """

    def __init__(
        self,
        task: Task,
        indices: np.ndarray,
        config: TrainingSettings,
        node_seed: int,
        label_map: np.ndarray | None = None,
        *,
        seed: int = 0,
    ) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or len(indices) == 0:
            raise ValueError("a trainer needs a non-empty 1-D array of sample indices")
        if indices.min() < 0 or indices.max() >= len(task.train):
            raise ValueError(f"sample indices out of range for {len(task.train)} samples")
        torch.set_num_threads(config.torch_threads)

        self._task = task
        self._config = config
        index_tensor = torch.from_numpy(indices)
        self._x = task.train.X[index_tensor].contiguous()
        self._y = _relabel(task.train.y[index_tensor], label_map, task.num_classes)

        self._model = task.model_factory()
        self._params = [p for p in self._model.parameters() if p.requires_grad]
        self._dim = sum(p.numel() for p in self._params)
        self._flat_params, self._flat_grad = _flatten_into_views(self._params)
        # Vectors from the runner may be read-only (np.frombuffer over a received message),
        # which torch.from_numpy refuses; so they enter through numpy views of our own buffer.
        self._flat_params_np = self._flat_params.numpy()
        self._update_np = np.empty(self._dim, dtype=np.float32)
        self._momentum = torch.zeros(self._dim, dtype=torch.float32)
        self._momentum_started = False
        self._step = 0
        self._batches = 0
        self._train_loss = math.nan
        #: the local indices of the mini-batches of the latest gradient() (flipped_gradient)
        self._last_batches: list[torch.Tensor] = []

        self._sampler = torch.Generator().manual_seed(
            derive_seed(seed, node_seed, _PURPOSE_SAMPLER)
        )
        self._epoch_order = torch.empty(0, dtype=torch.int64)
        self._epoch_position = 0
        model_rng = torch.Generator().manual_seed(derive_seed(seed, node_seed, _PURPOSE_MODEL_RNG))
        self._model_rng_state = model_rng.get_state()

    # ------------------------------------------------------------------ vectors in and out

    @property
    def dim(self) -> int:
        """Length of every vector this trainer takes or returns."""
        return self._dim

    @property
    def step(self) -> int:
        """Number of gradients applied so far (the t of the learning-rate schedule)."""
        return self._step

    @property
    def train_loss(self) -> float:
        """Mean loss over the mini-batches of the last :meth:`gradient` (NaN before it)."""
        return self._train_loss

    @property
    def model(self) -> nn.Module:
        """The live module (its parameters are views into this trainer's flat buffer)."""
        return self._model

    def gradient(self) -> np.ndarray:
        """This node's momentum gradient on fresh local batches, as a new float32 vector.

        Averages the gradients of ``local_steps`` mini-batches, adds the L2 penalty, then folds
        the result into the EMA momentum and returns a copy of it.
        """
        config = self._config
        self._flat_grad.zero_()
        loss_total = 0.0
        self._model.train()
        self._last_batches = []
        with self._private_rng():
            for _ in range(config.local_steps):
                batch = self._next_batch()
                self._last_batches.append(batch)
                loss = F.cross_entropy(self._model(self._x[batch]), self._y[batch])
                torch.autograd.backward(loss)  # accumulates into the flat gradient
                loss_total += float(loss.detach())
        self._batches += config.local_steps
        self._train_loss = loss_total / config.local_steps

        grad = self._flat_grad
        if config.local_steps > 1:
            grad.div_(config.local_steps)
        if config.weight_decay:
            grad.add_(self._flat_params, alpha=config.weight_decay)
        if self._momentum_started:
            self._momentum.mul_(config.momentum).add_(grad, alpha=1.0 - config.momentum)
        else:
            self._momentum.copy_(grad)
            self._momentum_started = True
        return self._momentum.numpy().copy()

    def flipped_gradient(self) -> np.ndarray:
        """The gradient of the current model on the mini-batches of the latest
        :meth:`gradient`, with every label y replaced by num_classes - 1 - y, as a new float32
        vector: what an honest ByzFL client computes for the label-flipping attack (ByzFL
        0.0.11, ``fed_framework/client.py``, ``Client.compute_gradients``: on the same batch
        as its true gradient, with the model in eval mode, ``targets.sub(nb_labels - 1)
        .mul(-1)``; ``get_flat_flipped_gradients`` returns it without momentum).

        So: no momentum (ByzFL's flipped gradients carry none); the model in eval mode
        (ByzFL's, which also leaves BatchNorm statistics and the dropout RNG untouched);
        averaged over ``local_steps`` batches and with the L2 penalty added, as this
        trainer's own gradient is (ByzFL applies weight decay to the aggregate, on the
        server, which for every vector alike is the same as adding it to each). Call it
        before :meth:`apply_gradient` or :meth:`set_parameters` to get the gradient at the
        parameters :meth:`gradient` saw.

        Nothing the trainer's own path computes changes: the sampler, momentum, parameters,
        their gradient buffer and the private RNG are untouched (gradients come from
        ``torch.autograd.grad``, not accumulated into ``.grad``). Raises RuntimeError before
        the first :meth:`gradient`.
        """
        if not self._last_batches:
            raise RuntimeError("flipped_gradient() needs a gradient() call first")
        config = self._config
        top = self._task.num_classes - 1
        total = torch.zeros(self._dim, dtype=torch.float32)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self._model_rng_state)  # a copy: ours is not advanced
                for batch in self._last_batches:
                    logits = self._model(self._x[batch])
                    loss = F.cross_entropy(logits, top - self._y[batch])
                    grads = torch.autograd.grad(loss, self._params, allow_unused=True)
                    total += torch.cat(
                        [
                            torch.zeros(p.numel()) if g is None else g.reshape(-1)
                            for p, g in zip(self._params, grads, strict=True)
                        ]
                    )
        finally:
            self._model.train(was_training)
        if config.local_steps > 1:
            total.div_(config.local_steps)
        if config.weight_decay:
            total.add_(self._flat_params, alpha=config.weight_decay)
        return total.numpy()

    def apply_gradient(self, vec: np.ndarray) -> None:
        """``params -= lr_t * vec`` with the scheduled learning rate, then advance the step."""
        np.multiply(self._checked(vec, "gradient"), self.lr(), out=self._update_np)
        self._flat_params_np -= self._update_np
        self._step += 1

    def parameters(self) -> np.ndarray:
        """A float32 copy of the model parameters, flattened in ``model.parameters()`` order."""
        return self._flat_params_np.copy()

    def set_parameters(self, vec: np.ndarray) -> None:
        """Overwrite the model parameters with a flat vector (e.g. the agreed model)."""
        np.copyto(self._flat_params_np, self._checked(vec, "parameter"))

    def lr(self) -> float:
        """The learning rate the next :meth:`apply_gradient` uses."""
        config = self._config
        if config.lr_schedule == "inverse_sqrt":
            return config.lr / math.sqrt(1.0 + self._step / config.lr_decay_steps)
        return config.lr

    # ------------------------------------------------------------------------- evaluation

    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the current model on the task's test set."""
        test = self._task.test
        loss_sum = 0.0
        correct = 0
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(test), self._config.eval_batch_size):
                    stop = start + self._config.eval_batch_size
                    logits = self._model(test.X[start:stop])
                    y = test.y[start:stop]
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(dim=1) == y).sum())
        finally:
            self._model.train(was_training)
        return loss_sum / len(test), correct / len(test)

    def statistics(self) -> TrainerStatistics:
        return TrainerStatistics(
            steps=self._step,
            batches=self._batches,
            samples_local=len(self._y),
            train_loss=self._train_loss,
            lr=self.lr(),
        )

    # ---------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of everything that determines future outputs.

        Made only of tensors, ints, floats and str-keyed dicts, so it round-trips through
        ``torch.save`` and ``torch.load(..., weights_only=True)``.
        """
        return {
            "format": STATE_FORMAT,
            "dim": self._dim,
            "model": {k: v.detach().clone() for k, v in self._model.state_dict().items()},
            "momentum": self._momentum.clone(),
            "momentum_started": int(self._momentum_started),
            "step": self._step,
            "batches": self._batches,
            "train_loss": self._train_loss,
            "sampler_state": self._sampler.get_state(),
            "epoch_order": self._epoch_order.clone(),
            "epoch_position": self._epoch_position,
            "model_rng_state": self._model_rng_state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a trainer of the same task and data.

        Raises ValueError, before changing anything, for a checkpoint of another format,
        model or data size (the model itself is validated by torch and restored last).
        """
        if state.get("format") != STATE_FORMAT or state.get("dim") != self._dim:
            raise ValueError(
                f"checkpoint format {state.get('format')} / dim {state.get('dim')} does not "
                f"match this trainer (format {STATE_FORMAT}, dim {self._dim})"
            )
        momentum = state["momentum"]
        epoch_order = state["epoch_order"]
        epoch_position = int(state["epoch_position"])
        n_local = len(self._y)
        # The epoch order is empty before the first batch, a permutation of the local samples after.
        if (
            momentum.shape != (self._dim,)
            or epoch_order.ndim != 1
            or epoch_order.numel() not in (0, n_local)
            or (epoch_order.numel() and int(epoch_order.max()) >= n_local)
            or not 0 <= epoch_position <= epoch_order.numel()
        ):
            raise ValueError(
                f"checkpoint momentum or sampler state does not fit this trainer "
                f"(dim {self._dim}, {n_local} local samples)"
            )
        try:
            with torch.no_grad():
                self._model.load_state_dict(state["model"])  # copies into the flat-buffer views
        except RuntimeError as exc:
            raise ValueError(f"checkpoint model does not fit this trainer: {exc}") from exc
        self._momentum.copy_(momentum)
        self._momentum_started = bool(state["momentum_started"])
        self._step = int(state["step"])
        self._batches = int(state["batches"])
        self._train_loss = float(state["train_loss"])
        self._sampler.set_state(state["sampler_state"])
        self._epoch_order = epoch_order.to(torch.int64, copy=True)
        self._epoch_position = epoch_position
        self._model_rng_state = state["model_rng_state"].clone()

    # -------------------------------------------------------------------------- internals

    def _next_batch(self) -> torch.Tensor:
        """The next ``batch_size`` local indices, epoch by epoch without replacement."""
        wanted = self._config.batch_size
        pieces: list[torch.Tensor] = []
        while wanted > 0:
            if self._epoch_position >= len(self._epoch_order):
                self._epoch_order = torch.randperm(len(self._y), generator=self._sampler)
                self._epoch_position = 0
            piece = self._epoch_order[self._epoch_position : self._epoch_position + wanted]
            self._epoch_position += len(piece)
            wanted -= len(piece)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    @contextmanager
    def _private_rng(self) -> Iterator[None]:
        """Run the model on this trainer's own copy of torch's CPU RNG (for dropout & co)."""
        outside = torch.get_rng_state()
        torch.set_rng_state(self._model_rng_state)
        try:
            yield
        finally:
            self._model_rng_state = torch.get_rng_state()
            torch.set_rng_state(outside)

    def _checked(self, vec: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(vec)
        if array.shape != (self._dim,) or array.dtype.kind != "f":
            raise ValueError(
                f"{what} vector has shape {array.shape} and dtype {array.dtype}, "
                f"expected a float vector of shape ({self._dim},)"
            )
        return array


def _relabel(y: torch.Tensor, label_map: np.ndarray | None, num_classes: int) -> torch.Tensor:
    if label_map is None:
        return y.clone()
    mapping = np.asarray(label_map)
    if (
        mapping.shape != (num_classes,)
        or not np.issubdtype(mapping.dtype, np.integer)
        or mapping.min() < 0
        or mapping.max() >= num_classes
    ):
        raise ValueError(f"label_map must be {num_classes} integer class indices")
    return torch.from_numpy(mapping.astype(np.int64))[y]


def _flatten_into_views(params: list[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move parameters and their gradients into two flat float32 buffers; return the buffers.

    Afterwards each parameter's ``.data`` and ``.grad`` are views into the buffers, and
    autograd accumulates into the existing ``.grad`` in place, so the flat gradient is filled
    by ``backward()`` without any gather.
    """
    dim = sum(p.numel() for p in params)
    flat_params = torch.empty(dim, dtype=torch.float32)
    flat_grad = torch.zeros(dim, dtype=torch.float32)
    offset = 0
    for p in params:
        n = p.numel()
        flat_params[offset : offset + n].copy_(p.detach().reshape(-1))
        p.data = flat_params[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    return flat_params, flat_grad
