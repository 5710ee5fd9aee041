"""The local learner: one node's model, momentum and data sampler, behind flat float32 vectors.

The runner drives the paper's LEARN loop (DESIGN 4.3) with four calls per step::

    g = trainer.gradient()                  # local momentum gradient on a fresh batch
    g = <averaging agreement on g>          # R_t rounds of RB-TM
    trainer.apply_gradient(g)               # params -= lr_t * g
    trainer.set_parameters(<agreement on trainer.parameters()>)

**Local steps (DiLoCo).** With ``inner_steps = H > 1`` one step of that loop is an *outer*
step: :meth:`Trainer.gradient` runs H inner optimiser steps (``inner_optimizer``: the EMA
momentum SGD below, or AdamW) from the start-of-round model theta_0 on local batches, puts
theta_0 back, and returns the pseudo-gradient in units of the inner learning rate,
``v = sum_h d_h`` where ``d_h`` is inner step h's update direction (so the local model was
``theta_H = theta_0 - lr_t * v``: ``v = (theta_0 - theta_H) / lr_t``, up to float32 rounding
of the trajectory). The agreement runs on v, and :meth:`Trainer.apply_gradient` is the outer
optimiser, SGD with Nesterov momentum mu = ``outer_momentum``::

    b = mu * b + v;  theta_0 -= outer_lr * lr_t * (v + mu * b)    # mu = 0: v alone

Expressing v in gradient units is what makes H = 1, outer_lr = 1, mu = 0 *today's loop*,
bit for bit: v is the momentum gradient and the update is ``lr_t * v`` (tests pin it to the
digest). The inner optimiser's state (momentum, or AdamW's moments) carries over from one
outer step to the next, as in DiLoCo (Douillard et al., 2023); the learning-rate schedule
counts outer steps.

**Device.** ``device = "cuda"`` (or ``"auto"`` on a machine with one) keeps the model, the
data, the flat buffers and the optimiser state on the GPU; a vector crosses to the CPU once
when it is handed to the agreement (:meth:`gradient`, :meth:`parameters`) and once back
(:meth:`apply_gradient`, :meth:`set_parameters`). On the CPU the numpy views below are used
unchanged. GPU runs are not bit-reproducible across GPU models (and dropout draws from
torch's CUDA generator, not the private CPU stream).

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

#: bumped when the layout of :meth:`Trainer.state_dict` changes (2: AdamW moments, outer
#: momentum; format 1 loads with them zero)
STATE_FORMAT: Final = 2
#: AdamW's constants (Loshchilov & Hutter's defaults, as torch.optim.AdamW's)
ADAM_BETA1: Final = 0.9
ADAM_BETA2: Final = 0.999
ADAM_EPS: Final = 1e-8

# Purposes keying the per-node random streams (DESIGN 6).
_PURPOSE_SAMPLER: Final = 1
_PURPOSE_MODEL_RNG: Final = 2


@dataclass(frozen=True, slots=True)
class TrainerStatistics:
    """A snapshot of a trainer's counters."""

    #: calls to :meth:`Trainer.apply_gradient` (outer steps)
    steps: int
    #: mini-batches drawn for gradients (inner_steps x batches_per_gradient per step)
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
        self._device = resolve_device(config.device)
        device = self._device
        index_tensor = torch.from_numpy(indices)
        self._x = task.train.X[index_tensor].contiguous().to(device)
        self._y = _relabel(task.train.y[index_tensor], label_map, task.num_classes).to(device)
        self._test_x = task.test.X.to(device)
        self._test_y = task.test.y.to(device)

        self._model = task.model_factory().to(device)
        self._params = [p for p in self._model.parameters() if p.requires_grad]
        self._dim = sum(p.numel() for p in self._params)
        self._flat_params, self._flat_grad = _flatten_into_views(self._params, device)
        self._on_cpu = device.type == "cpu"
        # Vectors from the runner may be read-only (np.frombuffer over a received message),
        # which torch.from_numpy refuses; so they enter through numpy views of our own buffer.
        self._flat_params_np = self._flat_params.numpy() if self._on_cpu else None
        self._update_np = np.empty(self._dim, dtype=np.float32)
        #: the inner optimiser's first moment: sgd's EMA momentum, or AdamW's m
        self._momentum = torch.zeros(self._dim, dtype=torch.float32, device=device)
        self._momentum_started = False
        #: AdamW's second moment and its step count (bias corrections)
        self._second_moment = torch.zeros(
            self._dim if config.inner_optimizer == "adamw" else 0,
            dtype=torch.float32,
            device=device,
        )
        self._adam_steps = 0
        #: the outer optimiser's Nesterov buffer (empty when outer_momentum is 0)
        self._outer_buffer = np.zeros(self._dim if config.outer_momentum else 0, np.float32)
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

    @property
    def batches(self) -> int:
        """Mini-batches drawn so far, for gradients (every inner step's)."""
        return self._batches

    @property
    def device(self) -> torch.device:
        """Where the model, its data and the optimiser state live."""
        return self._device

    def gradient(self) -> np.ndarray:
        """The vector this node proposes for the gradient agreement, as a new float32 array.

        With ``inner_steps = 1`` (and sgd) it is the momentum gradient on fresh local batches:
        the gradients of ``batches_per_gradient`` mini-batches averaged, the L2 penalty
        added, folded into the EMA momentum. With H inner steps, it is the sum of the H
        inner update directions taken from the current model, which is then put back (the
        module docstring): the DiLoCo pseudo-gradient divided by the learning rate.
        """
        steps = self._config.inner_steps
        if steps == 1:
            return self._to_numpy(self._inner_direction())
        start = self._flat_params.clone()
        lr = self.lr()
        direction = self._inner_direction()
        total = direction.clone()
        for _ in range(steps - 1):
            self._flat_params.sub_(direction, alpha=lr)  # the local model moves
            direction = self._inner_direction()
            total.add_(direction)
        self._flat_params.copy_(start)  # the outer optimiser moves theta_0
        return self._to_numpy(total)

    def _inner_direction(self) -> torch.Tensor:
        """One inner step's update direction at the current parameters (a view of this
        trainer's state: copy before the next call)."""
        config = self._config
        grad = self._batch_gradient()
        if config.inner_optimizer == "adamw":
            return self._adamw_direction(grad)
        if config.weight_decay:
            grad.add_(self._flat_params, alpha=config.weight_decay)
        if self._momentum_started:
            self._momentum.mul_(config.momentum).add_(grad, alpha=1.0 - config.momentum)
        else:
            self._momentum.copy_(grad)
            self._momentum_started = True
        return self._momentum

    def _adamw_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """AdamW's step direction: ``m_hat / (sqrt(v_hat) + eps) + weight_decay * theta``
        (decoupled weight decay), with the moments updated by ``grad``."""
        self._adam_steps += 1
        t = self._adam_steps
        self._momentum.mul_(ADAM_BETA1).add_(grad, alpha=1.0 - ADAM_BETA1)
        self._second_moment.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1.0 - ADAM_BETA2)
        denominator = (self._second_moment / (1.0 - ADAM_BETA2**t)).sqrt_().add_(ADAM_EPS)
        direction = (self._momentum / (1.0 - ADAM_BETA1**t)).div_(denominator)
        if self._config.weight_decay:
            direction.add_(self._flat_params, alpha=self._config.weight_decay)
        return direction

    def _batch_gradient(self) -> torch.Tensor:
        """The mean gradient of ``batches_per_gradient`` fresh mini-batches at the current
        parameters, in the flat gradient buffer (which it returns)."""
        batches = self._config.batches_per_gradient
        self._flat_grad.zero_()
        loss_total = 0.0
        self._model.train()
        self._last_batches = []
        with self._private_rng():
            for _ in range(batches):
                batch = self._next_batch()
                self._last_batches.append(batch)
                loss = F.cross_entropy(self._model(self._x[batch]), self._y[batch])
                torch.autograd.backward(loss)  # accumulates into the flat gradient
                loss_total += float(loss.detach())
        self._batches += batches
        self._train_loss = loss_total / batches
        if batches > 1:
            self._flat_grad.div_(batches)
        return self._flat_grad

    def _to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        """A new float32 numpy copy of ``tensor``: the one crossing to the CPU."""
        if self._on_cpu:
            return tensor.numpy().copy()
        return tensor.detach().cpu().numpy()

    def flipped_gradient(self) -> np.ndarray:
        """The gradient of the current model on the mini-batches of the latest
        :meth:`gradient`, with every label y replaced by num_classes - 1 - y, as a new float32
        vector: what an honest ByzFL client computes for the label-flipping attack (ByzFL
        0.0.11, ``fed_framework/client.py``, ``Client.compute_gradients``: on the same batch
        as its true gradient, with the model in eval mode, ``targets.sub(nb_labels - 1)
        .mul(-1)``; ``get_flat_flipped_gradients`` returns it without momentum).

        So: no momentum (ByzFL's flipped gradients carry none); the model in eval mode
        (ByzFL's, which also leaves BatchNorm statistics and the dropout RNG untouched);
        averaged over ``batches_per_gradient`` batches and with the L2 penalty added, as this
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
        total = torch.zeros(self._dim, dtype=torch.float32, device=self._device)
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
                            torch.zeros(p.numel(), device=self._device)
                            if g is None
                            else g.reshape(-1)
                            for p, g in zip(self._params, grads, strict=True)
                        ]
                    )
        finally:
            self._model.train(was_training)
        if config.batches_per_gradient > 1:
            total.div_(config.batches_per_gradient)
        if config.weight_decay:
            total.add_(self._flat_params, alpha=config.weight_decay)
        return self._to_numpy(total)

    def apply_gradient(self, vec: np.ndarray) -> None:
        """The outer step: ``params -= outer_lr * lr_t * vec`` (with Nesterov momentum when
        ``outer_momentum`` > 0), then advance the step. With the defaults it is
        ``params -= lr_t * vec``."""
        config = self._config
        vec = self._checked(vec, "gradient")
        if config.outer_momentum:
            buffer = self._outer_buffer
            buffer *= np.float32(config.outer_momentum)
            buffer += vec
            vec = vec + np.float32(config.outer_momentum) * buffer
        scale = config.outer_lr * self.lr()  # exactly lr_t when outer_lr is 1
        np.multiply(vec, scale, out=self._update_np)
        if self._flat_params_np is not None:
            self._flat_params_np -= self._update_np
        else:
            self._flat_params.sub_(torch.from_numpy(self._update_np).to(self._device))
        self._step += 1

    def parameters(self) -> np.ndarray:
        """A float32 copy of the model parameters, flattened in ``model.parameters()`` order."""
        if self._flat_params_np is not None:
            return self._flat_params_np.copy()
        return self._flat_params.detach().cpu().numpy()

    def set_parameters(self, vec: np.ndarray) -> None:
        """Overwrite the model parameters with a flat vector (e.g. the agreed model)."""
        checked = self._checked(vec, "parameter")
        if self._flat_params_np is not None:
            np.copyto(self._flat_params_np, checked)
        else:
            host = torch.from_numpy(np.array(checked, dtype=np.float32))  # a writable copy
            self._flat_params.copy_(host.to(self._device))

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
                    logits = self._model(self._test_x[start:stop])
                    y = self._test_y[start:stop]
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
            "model": {k: v.detach().cpu().clone() for k, v in self._model.state_dict().items()},
            "momentum": self._momentum.cpu().clone(),
            "momentum_started": int(self._momentum_started),
            "second_moment": self._second_moment.cpu().clone(),
            "adam_steps": self._adam_steps,
            "outer_buffer": torch.from_numpy(self._outer_buffer.copy()),
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
        if state.get("format") not in (1, STATE_FORMAT) or state.get("dim") != self._dim:
            raise ValueError(
                f"checkpoint format {state.get('format')} / dim {state.get('dim')} does not "
                f"match this trainer (format {STATE_FORMAT}, dim {self._dim})"
            )
        momentum = state["momentum"]
        # format 1 (before local steps) had no AdamW moments and no outer momentum: zeros
        second_moment = state.get("second_moment", torch.zeros(self._second_moment.numel()))
        outer_buffer = state.get("outer_buffer", torch.zeros(self._outer_buffer.size))
        epoch_order = state["epoch_order"]
        epoch_position = int(state["epoch_position"])
        n_local = len(self._y)
        # The epoch order is empty before the first batch, a permutation of the local samples after.
        if (
            momentum.shape != (self._dim,)
            or second_moment.shape != self._second_moment.shape
            or outer_buffer.shape != self._outer_buffer.shape
            or epoch_order.ndim != 1
            or epoch_order.numel() not in (0, n_local)
            or (epoch_order.numel() and int(epoch_order.max()) >= n_local)
            or not 0 <= epoch_position <= epoch_order.numel()
        ):
            raise ValueError(
                f"checkpoint optimiser or sampler state does not fit this trainer "
                f"(dim {self._dim}, {n_local} local samples, inner_optimizer "
                f"{self._config.inner_optimizer}, outer_momentum {self._config.outer_momentum})"
            )
        try:
            with torch.no_grad():
                self._model.load_state_dict(state["model"])  # copies into the flat-buffer views
        except RuntimeError as exc:
            raise ValueError(f"checkpoint model does not fit this trainer: {exc}") from exc
        self._momentum.copy_(momentum.to(self._device))
        self._momentum_started = bool(state["momentum_started"])
        self._second_moment.copy_(second_moment.to(self._device))
        self._adam_steps = int(state.get("adam_steps", 0))
        self._outer_buffer[:] = outer_buffer.numpy()
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
        batch = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return batch if self._on_cpu else batch.to(self._device)

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


def resolve_device(name: str) -> torch.device:
    """The torch device a ``device`` setting names: ``auto`` is cuda when available.

    Raises ValueError for ``cuda`` on a machine without a usable GPU (one line saying so).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device = cuda, but torch sees no CUDA GPU here (torch "
            f"{torch.__version__}); use device = cpu or auto"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def _flatten_into_views(
    params: list[nn.Parameter], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move parameters and their gradients into two flat float32 buffers; return the buffers.

    Afterwards each parameter's ``.data`` and ``.grad`` are views into the buffers, and
    autograd accumulates into the existing ``.grad`` in place, so the flat gradient is filled
    by ``backward()`` without any gather.
    """
    dim = sum(p.numel() for p in params)
    flat_params = torch.empty(dim, dtype=torch.float32, device=device)
    flat_grad = torch.zeros(dim, dtype=torch.float32, device=device)
    offset = 0
    for p in params:
        n = p.numel()
        flat_params[offset : offset + n].copy_(p.detach().reshape(-1))
        p.data = flat_params[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    return flat_params, flat_grad
