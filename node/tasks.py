"""Learning tasks: a model factory plus a fixed train/test split, identical on every node.

Every honest node must start from the same initial model and evaluate on the same held-out
data, otherwise "close to each other" (DESIGN 4.2) is measured against different targets.
So a :class:`Task` is a pure function of ``(spec, seed)``: the split is drawn from the seed,
and the model factory builds its module under a private, seeded torch RNG, so calling it twice
(on one node or on a hundred) gives bit-identical parameters whatever the global RNG holds.

Built-in tasks (nothing is downloaded at run time):

- ``digits-mlp``: scikit-learn's 8x8 digits (shipped inside the package), pixels scaled to
  [0, 1], an MLP 64-64-10;
- ``digits-cnn``: the same data as 1x8x8 images, a two-layer CNN;
- ``synthetic``: seeded Gaussian blobs (5 classes, 20 features) and a linear classifier; tiny
  and fast, for tests and protocol-focused simulations.

Tasks on datasets from local files under ``data_dir`` (node/datasets.py: formats, layouts,
errors), with the files' own train/test split (the seed only draws the initial model):

- ``mnist``, ``fashion-mnist``: the four IDX files (or ``.gz``), 1x28x28 images, 10 classes;
- ``cifar10``: CIFAR-10's binary batches, 3x32x32 images, 10 classes;
- ``npz``: an ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Images get node/models.py's CNN (three conv layers and a 1024-wide hidden layer: 1.08M
parameters at 3x32x32, 624k at 1x28x28); flat ``(N, D)`` npz features an MLP D-256-classes.
A dataset is read once per process (cached by its files' resolved paths, sizes and mtimes)
and shared by every task built on it.

A user's own task is ``"package.module:function"``: ``function()`` returns
``(model, (X_train, y_train), (X_test, y_test))`` with tensors or numpy arrays. It is called
under the same seeded torch RNG, so a model it initialises is identical across nodes.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import torch
from torch import nn

from node.datasets import DATASET_NAMES, dataset_files, read_dataset
from node.models import image_cnn, mlp

#: fraction of each class held out for testing in built-in tasks
TEST_FRACTION = 0.2

# Purposes keying the streams derived from a task seed (DESIGN 6: never share one stream).
_PURPOSE_SPLIT = 1
_PURPOSE_MODEL_INIT = 2
_PURPOSE_DATA = 3


@dataclass(frozen=True, slots=True)
class Dataset:
    """Row-aligned features and labels: ``X`` float32 ``(N, ...)``, ``y`` int64 ``(N,)``."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, slots=True)
class Task:
    """What every node of a run learns: the same initial model and the same data split.

    ``model_factory()`` returns a fresh module with the task's seeded initial parameters on
    every call; nodes partition ``train`` among themselves and all evaluate on ``test``.
    """

    name: str
    model_factory: Callable[[], nn.Module]
    train: Dataset
    test: Dataset
    num_classes: int


def derive_seed(*key: int) -> int:
    """A 64-bit seed for the stream named by ``key`` (e.g. ``(run seed, node, purpose)``).

    Distinct keys give independent streams (numpy's SeedSequence), so no two purposes ever
    draw from one generator in an order that depends on who asked first (DESIGN 6).
    """
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])


_T = TypeVar("_T")


def seeded_call(seed: int, build: Callable[[], _T]) -> _T:
    """Run ``build()`` with torch's CPU RNG seeded to ``seed``, leaving the global RNG untouched.

    Module constructors draw their initial weights from torch's global generator; forking it
    here makes initialisation a function of ``seed`` alone, not of whatever ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays holding out ``test_fraction`` of each class."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Dataset, Dataset]:
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, derive_seed(seed, _PURPOSE_SPLIT))

    def subset(idx: np.ndarray) -> Dataset:  # fancy indexing copies: the source stays shared
        return Dataset(
            torch.from_numpy(x[idx].astype(np.float32, copy=False)),
            torch.from_numpy(y[idx].astype(np.int64, copy=False)),
        )

    return subset(train_idx), subset(test_idx)


def _seeded_factory(seed: int, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    init_seed = derive_seed(seed, _PURPOSE_MODEL_INIT)
    return lambda: seeded_call(init_seed, build).float()


# ---------------------------------------------------------------------------- built-in tasks


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Digits pixels scaled to [0, 1] and labels; read once per process, then shared read-only."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn takes ~1 s to import

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _mlp_64_64_10() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn_8x8() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 x 4 x 4
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 x 2 x 2
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def _digits_mlp(seed: int) -> Task:
    x, y = _digits_arrays()
    train, test = _split(x, y, seed)
    return Task("digits-mlp", _seeded_factory(seed, _mlp_64_64_10), train, test, 10)


def _digits_cnn(seed: int) -> Task:
    x, y = _digits_arrays()
    train, test = _split(x.reshape(-1, 1, 8, 8), y, seed)
    return Task("digits-cnn", _seeded_factory(seed, _cnn_8x8), train, test, 10)


SYNTHETIC_CLASSES = 5
SYNTHETIC_FEATURES = 20
SYNTHETIC_SAMPLES = 2000
#: spread of the class centres, in units of the within-class noise; chosen so a linear model
#: reaches 85-90% (scikit-learn's logistic regression, seeds 0-3): learnable, not separable
SYNTHETIC_CENTRE_SCALE = 0.6


def _synthetic(seed: int) -> Task:
    rng = np.random.default_rng(derive_seed(seed, _PURPOSE_DATA))
    centres = rng.normal(0.0, SYNTHETIC_CENTRE_SCALE, (SYNTHETIC_CLASSES, SYNTHETIC_FEATURES))
    y = rng.integers(0, SYNTHETIC_CLASSES, SYNTHETIC_SAMPLES)
    x = centres[y] + rng.normal(0.0, 1.0, (SYNTHETIC_SAMPLES, SYNTHETIC_FEATURES))
    train, test = _split(x, y, seed)

    def linear() -> nn.Module:
        return nn.Linear(SYNTHETIC_FEATURES, SYNTHETIC_CLASSES)

    return Task("synthetic", _seeded_factory(seed, linear), train, test, SYNTHETIC_CLASSES)


BUILTIN_TASKS: dict[str, Callable[[int], Task]] = {
    "digits-mlp": _digits_mlp,
    "digits-cnn": _digits_cnn,
    "synthetic": _synthetic,
}


# ------------------------------------------------------------------ datasets from files

#: tasks that read their data from files under ``data_dir`` (node/datasets.py)
DATASET_TASKS: Final = DATASET_NAMES
#: datasets held in memory at once (each key: a dataset's files, as they were when read)
DATASET_CACHE_ENTRIES_MAX: Final = 2
_dataset_cache: dict[tuple[object, ...], tuple[Dataset, Dataset, int]] = {}


def _dataset_task(name: str, seed: int, data_dir: str | Path) -> Task:
    train, test, num_classes = _dataset_splits(name, data_dir)
    shape = tuple(train.X.shape[1:])
    if len(shape) == 3:
        build = functools.partial(image_cnn, (shape[0], shape[1], shape[2]), num_classes)
    else:
        build = functools.partial(mlp, shape[0], num_classes)
    return Task(name, _seeded_factory(seed, build), train, test, num_classes)


def _dataset_splits(name: str, data_dir: str | Path) -> tuple[Dataset, Dataset, int]:
    """The dataset's train and test sets, read once per process: a second task on the same
    unchanged files (the simulator's, a test's) shares these tensors, which no one writes."""
    files = dataset_files(name, data_dir)
    key = (name, *(_stamp(path) for path in files))
    cached = _dataset_cache.get(key)
    if cached is None:
        arrays = read_dataset(name, files)
        train = Dataset(torch.from_numpy(arrays.x_train), torch.from_numpy(arrays.y_train))
        test = Dataset(torch.from_numpy(arrays.x_test), torch.from_numpy(arrays.y_test))
        cached = (train, test, arrays.num_classes)
        while len(_dataset_cache) >= DATASET_CACHE_ENTRIES_MAX:
            del _dataset_cache[next(iter(_dataset_cache))]  # the oldest
        _dataset_cache[key] = cached
    return cached


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        resolved = path.resolve()
        status = resolved.stat()
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror}") from None
    return str(resolved), status.st_size, status.st_mtime_ns


# ------------------------------------------------------------------------------ user tasks


def load_task(spec: str, seed: int, data_dir: str | Path = "") -> Task:
    """The task named by ``spec``: a built-in name, a dataset task reading ``data_dir``
    (``mnist``, ``fashion-mnist``, ``cifar10``, ``npz``; relative to the current directory)
    or ``"package.module:function"``.

    Raises ValueError, with the reason, for an unknown name, a dataset task without
    ``data_dir`` or with files missing or corrupt, ``data_dir`` given to a task that reads
    no files, a module that cannot be imported, a missing or non-callable function, or a
    return value of the wrong shape.
    """
    if spec in DATASET_TASKS:
        if not str(data_dir):
            raise ValueError(f"task {spec!r} reads local files: set data_dir (--data-dir)")
        return _dataset_task(spec, seed, data_dir)
    if str(data_dir):
        raise ValueError(
            f"task {spec!r} reads no files, yet data_dir is {str(data_dir)!r}: data_dir is "
            f"for the {', '.join(DATASET_TASKS)} tasks"
        )
    builtin = BUILTIN_TASKS.get(spec)
    if builtin is not None:
        return builtin(seed)
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        known = ", ".join(sorted([*BUILTIN_TASKS, *DATASET_TASKS]))
        raise ValueError(f"unknown task {spec!r}: expected one of {known} or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"task {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"task {spec!r}: {module_name} has no callable {function_name!r}")

    init_seed = derive_seed(seed, _PURPOSE_MODEL_INIT)
    result = seeded_call(init_seed, function)
    model, train, test = _unpack_user_result(spec, result)
    model = model.float()
    num_classes = _output_width(spec, model, test)
    label_max = int(max(train.y.max(), test.y.max()))
    if label_max >= num_classes:
        raise ValueError(
            f"task {spec!r}: label {label_max} out of range for a model with {num_classes} outputs"
        )
    # The user's function ran once, seeded; every node copies that one initial model.
    return Task(spec, lambda: copy.deepcopy(model), train, test, num_classes)


def _output_width(spec: str, model: nn.Module, sample: Dataset) -> int:
    """The number of classes the model scores, from one forward pass on two test rows."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample.X[:2])
    except Exception as exc:  # the user's model rejecting its own data: report, don't crash
        raise ValueError(f"task {spec!r}: the model fails on the test inputs: {exc!r}") from exc
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"task {spec!r}: the model must output (N, classes) logits, got {shape}")
    return int(logits.shape[1])


def _unpack_user_result(spec: str, result: Any) -> tuple[nn.Module, Dataset, Dataset]:
    if not isinstance(result, tuple) or len(result) != 3:
        raise ValueError(
            f"task {spec!r}: expected (model, (X_train, y_train), (X_test, y_test)), "
            f"got {type(result).__name__}"
        )
    model, train, test = result
    if not isinstance(model, nn.Module):
        raise ValueError(f"task {spec!r}: model must be a torch.nn.Module, got {type(model)}")
    return model, _as_dataset(spec, "train", train), _as_dataset(spec, "test", test)


def _as_dataset(spec: str, which: str, pair: Any) -> Dataset:
    where = f"task {spec!r}: {which} set"
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"{where} must be an (X, y) pair, got {type(pair).__name__}")
    try:
        x = _as_cpu_tensor(pair[0])
        y = _as_cpu_tensor(pair[1])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: X and y must be arrays or tensors: {exc}") from exc
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(
            f"{where}: need X of shape (N, ...) and y of shape (N,) with N > 0, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.is_complex() or y.is_complex():
        raise ValueError(f"{where}: complex features or labels are not supported")
    if y.is_floating_point() and not (torch.isfinite(y).all() and (y == y.round()).all()):
        raise ValueError(f"{where}: labels must be integers, got non-integral {y.dtype} values")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise ValueError(f"{where}: labels must be non-negative class indices")
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{where}: features contain NaN or infinity")
    return Dataset(x.contiguous(), y.contiguous())


def _as_cpu_tensor(value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"not a numeric array (dtype {array.dtype})")
    return torch.from_numpy(np.ascontiguousarray(array))
