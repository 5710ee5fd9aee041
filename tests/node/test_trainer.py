"""Tasks load identically everywhere; the trainer learns, is deterministic and checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from node.partition import partition
from node.tasks import BUILTIN_TASKS, Task, load_task
from node.trainer import Trainer
from node.training import TrainingSettings

HERE = "tests.node.test_trainer"


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Trainers set torch's thread count process-wide; give other modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits-mlp", seed=0)


def whole_train_set(task: Task) -> np.ndarray:
    return np.arange(len(task.train))


def train_locally(trainer: Trainer, steps: int) -> None:
    for _ in range(steps):
        trainer.apply_gradient(trainer.gradient())


# ------------------------------------------------------------------------ user tasks for specs


NumpySet = tuple[np.ndarray, np.ndarray]
TensorSet = tuple[torch.Tensor, torch.Tensor]


def tiny_task() -> tuple[nn.Module, NumpySet, NumpySet]:
    """A custom task as a user writes one: numpy data, a model initialised from torch's RNG."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float64)
    y = (x[:, 0] > 0).astype(np.int32)
    return nn.Linear(4, 2), (x[:40], y[:40]), (x[40:], y[40:])


def dropout_task() -> tuple[nn.Module, TensorSet, TensorSet]:
    """A stochastic model: its randomness must come from the trainer's private stream."""
    x = torch.linspace(-1, 1, 64).reshape(16, 4)
    y = torch.arange(16) % 3
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    return model, (x, y), (x, y)


def returns_a_list() -> list[Any]:
    return list(tiny_task())


def returns_no_module() -> tuple[Any, ...]:
    _, train, test = tiny_task()
    return "model", train, test


def returns_ragged_set() -> tuple[Any, ...]:
    model, (x, y), test = tiny_task()
    return model, (x, y[:-1]), test


def returns_fractional_labels() -> tuple[Any, ...]:
    model, (x, y), test = tiny_task()
    return model, (x, y + 0.5), test


def returns_labels_beyond_outputs() -> tuple[Any, ...]:
    model, (x, y), test = tiny_task()
    return model, (x, y * 2), test


NOT_CALLABLE = 3


# ------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_load_with_a_stratified_split(name: str) -> None:
    task = load_task(name, seed=0)
    assert task.name == name
    for split in (task.train, task.test):
        assert split.X.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.X.shape[0] == len(split) and torch.isfinite(split.X).all()
    train_counts = torch.bincount(task.train.y, minlength=task.num_classes).double()
    test_counts = torch.bincount(task.test.y, minlength=task.num_classes).double()
    fraction = test_counts / (train_counts + test_counts)
    assert torch.allclose(fraction, torch.full_like(fraction, 0.2), atol=0.02)
    logits = task.model_factory()(task.test.X[:3])
    assert logits.shape == (3, task.num_classes)


def test_task_split_and_model_are_a_function_of_the_seed() -> None:
    first, again, other = (load_task("synthetic", s) for s in (1, 1, 2))
    assert torch.equal(first.train.X, again.train.X) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.train.X, other.train.X)
    model = first.model_factory()
    torch.manual_seed(1234)  # the global RNG must not matter
    assert torch.equal(
        nn.utils.parameters_to_vector(model.parameters()),
        nn.utils.parameters_to_vector(again.model_factory().parameters()),
    )
    assert not torch.equal(
        nn.utils.parameters_to_vector(model.parameters()),
        nn.utils.parameters_to_vector(other.model_factory().parameters()),
    )


def test_loading_a_task_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    load_task("digits-cnn", seed=3).model_factory()
    load_task(f"{HERE}:tiny_task", seed=3)
    assert torch.equal(before, torch.get_rng_state())


def test_custom_task_from_module_function() -> None:
    task = load_task(f"{HERE}:tiny_task", seed=7)
    assert (len(task.train), len(task.test), task.num_classes) == (40, 20, 2)
    assert task.train.X.dtype == torch.float32 and task.train.y.dtype == torch.int64
    same = load_task(f"{HERE}:tiny_task", seed=7)
    a, b = (
        Trainer(task, np.arange(40), TrainingSettings(), 0),
        Trainer(same, np.arange(40), TrainingSettings(), 1),
    )
    assert np.array_equal(a.parameters(), b.parameters())
    train_locally(a, 100)
    assert a.evaluate()[1] > 0.8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet", "unknown task 'imagenet'"),
        (":tiny_task", "unknown task"),
        ("no_such_module_for_jungle:f", "cannot import module"),
        (f"{HERE}:missing", "has no callable 'missing'"),
        (f"{HERE}:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
        (f"{HERE}:returns_a_list", "expected \\(model,"),
        (f"{HERE}:returns_no_module", "must be a torch.nn.Module"),
        (f"{HERE}:returns_ragged_set", "train set: need X of shape"),
        (f"{HERE}:returns_fractional_labels", "labels must be integers"),
        (f"{HERE}:returns_labels_beyond_outputs", "label 2 out of range"),
    ],
)
def test_bad_task_specs_raise_value_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_task(spec, seed=0)


# ----------------------------------------------------------------------------------- trainer


def test_same_seed_gives_identical_initial_models_on_every_node(digits: Task) -> None:
    parts = partition(digits.train.y.numpy(), 2, "iid", seed=0)
    a = Trainer(digits, parts[0], TrainingSettings(), node_seed=0)
    b = Trainer(load_task("digits-mlp", seed=0), parts[1], TrainingSettings(), node_seed=1)
    assert a.dim == b.dim == 64 * 64 + 64 + 64 * 10 + 10
    assert np.array_equal(a.parameters(), b.parameters())
    c = Trainer(load_task("digits-mlp", seed=1), parts[0], TrainingSettings(), node_seed=0)
    assert not np.array_equal(a.parameters(), c.parameters())


def test_gradients_are_deterministic_per_node_seed(digits: Task) -> None:
    def first_gradients(node_seed: int) -> list[np.ndarray]:
        trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(), node_seed)
        return [trainer.gradient() for _ in range(3)]

    same, again, other = first_gradients(4), first_gradients(4), first_gradients(5)
    assert all(np.array_equal(a, b) for a, b in zip(same, again, strict=True))
    assert not np.array_equal(same[0], other[0])


def test_stochastic_models_draw_from_the_trainers_private_rng() -> None:
    task = load_task(f"{HERE}:dropout_task", seed=0)
    a = Trainer(task, np.arange(16), TrainingSettings(momentum=0.0), node_seed=2)
    b = Trainer(task, np.arange(16), TrainingSettings(momentum=0.0), node_seed=2)
    ga = a.gradient()
    torch.rand(1000)  # other nodes in the same process consume the global RNG in between
    gb = b.gradient()
    assert np.array_equal(ga, gb)
    assert not np.array_equal(a.gradient(), ga)  # dropout masks do change between batches


def test_local_training_on_digits_reaches_85_percent(digits: Task) -> None:
    trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(), node_seed=0)
    loss_before, _ = trainer.evaluate()
    train_locally(trainer, 300)
    loss_after, accuracy = trainer.evaluate()
    assert accuracy > 0.85
    assert loss_after < loss_before / 3
    assert trainer.statistics().steps == 300 and trainer.train_loss < 0.5


def test_evaluate_matches_a_direct_computation(digits: Task) -> None:
    trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(eval_batch_size=100), 0)
    train_locally(trainer, 20)
    with torch.no_grad():
        logits = trainer.model(digits.test.X)
    loss = float(nn.functional.cross_entropy(logits, digits.test.y))
    accuracy = float((logits.argmax(1) == digits.test.y).double().mean())
    assert trainer.evaluate() == pytest.approx((loss, accuracy), rel=1e-5)


def test_momentum_is_an_exponential_moving_average_of_gradients(digits: Task) -> None:
    plain = Trainer(digits, whole_train_set(digits), TrainingSettings(momentum=0.0), 0)
    averaged = Trainer(digits, whole_train_set(digits), TrainingSettings(momentum=0.9), 0)
    g1, g2 = plain.gradient(), plain.gradient()
    m1, m2 = averaged.gradient(), averaged.gradient()
    assert np.array_equal(m1, g1)  # m_1 = g_1: no bias towards zero
    np.testing.assert_allclose(m2, 0.9 * g1 + 0.1 * g2, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(m1, m2)  # the first result was a copy, not a live view


def test_batches_per_gradient_average_that_many_batch_gradients(digits: Task) -> None:
    one = Trainer(digits, whole_train_set(digits), TrainingSettings(momentum=0.0), 0)
    two = Trainer(
        digits, whole_train_set(digits), TrainingSettings(momentum=0.0, batches_per_gradient=2), 0
    )
    g1, loss1 = one.gradient(), one.train_loss
    g2, loss2 = one.gradient(), one.train_loss
    np.testing.assert_allclose(two.gradient(), (g1 + g2) / 2, rtol=1e-5, atol=1e-7)
    assert two.train_loss == pytest.approx((loss1 + loss2) / 2, rel=1e-6)
    assert two.statistics().batches == one.statistics().batches == 2


def test_weight_decay_adds_the_l2_gradient(digits: Task) -> None:
    plain = Trainer(digits, whole_train_set(digits), TrainingSettings(momentum=0.0), 0)
    decayed = Trainer(
        digits, whole_train_set(digits), TrainingSettings(momentum=0.0, weight_decay=0.01), 0
    )
    expected = plain.gradient() + 0.01 * plain.parameters()
    np.testing.assert_allclose(decayed.gradient(), expected, rtol=1e-5, atol=1e-7)


def test_apply_and_set_move_exactly_the_flat_vector(digits: Task) -> None:
    trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(lr=0.5), 0)
    before = trainer.parameters()
    update = np.random.default_rng(0).normal(size=trainer.dim).astype(np.float32)
    trainer.apply_gradient(update)
    np.testing.assert_allclose(trainer.parameters(), before - 0.5 * update, rtol=1e-6, atol=1e-7)
    snapshot = trainer.parameters()
    snapshot[:] = 0.0  # a copy: the model is untouched
    assert trainer.parameters().any()
    trainer.set_parameters(before)
    assert np.array_equal(trainer.parameters(), before)
    flat = nn.utils.parameters_to_vector(trainer.model.parameters()).detach().numpy()
    assert np.array_equal(flat, before)  # the vector is the module's own parameter order
    received = np.frombuffer((2 * before).tobytes(), dtype=np.float32)  # read-only, as received
    trainer.set_parameters(received)
    trainer.apply_gradient(received)
    np.testing.assert_allclose(trainer.parameters(), received - 0.5 * received, rtol=1e-6)
    for bad in (before[:-1], before.reshape(2, -1), before.astype(np.int32)):
        with pytest.raises(ValueError, match="shape"):
            trainer.set_parameters(bad)
        with pytest.raises(ValueError, match="shape"):
            trainer.apply_gradient(bad)


def test_inverse_sqrt_schedule_decays_the_learning_rate(digits: Task) -> None:
    config = TrainingSettings(lr=0.4, lr_schedule="inverse_sqrt", lr_decay_steps=10)
    trainer = Trainer(digits, whole_train_set(digits), config, 0)
    assert trainer.lr() == 0.4
    zeros = np.zeros(trainer.dim, dtype=np.float32)
    for _ in range(30):
        trainer.apply_gradient(zeros)
    assert trainer.lr() == pytest.approx(0.4 / 2.0)


def test_state_round_trips_through_torch_save_with_weights_only(
    digits: Task, tmp_path: Path
) -> None:
    config = TrainingSettings(batch_size=500)  # several batches cross an epoch boundary
    original = Trainer(digits, whole_train_set(digits), config, node_seed=0)
    train_locally(original, 7)
    path = tmp_path / "trainer.pt"
    torch.save(original.state_dict(), path)
    restored = Trainer(digits, whole_train_set(digits), config, node_seed=99)
    restored.load_state_dict(torch.load(path, weights_only=True))

    assert np.array_equal(restored.parameters(), original.parameters())
    assert restored.statistics() == original.statistics()
    for _ in range(3):
        g = original.gradient()
        assert np.array_equal(restored.gradient(), g)
        original.apply_gradient(g)
        restored.apply_gradient(g)
    assert np.array_equal(restored.parameters(), original.parameters())


def test_a_checkpoint_of_another_model_or_data_is_refused(digits: Task) -> None:
    synthetic = load_task("synthetic", seed=0)
    other_model = Trainer(synthetic, whole_train_set(synthetic), TrainingSettings(), 0)
    other_data = Trainer(digits, np.arange(100), TrainingSettings(), 0)
    other_data.gradient()  # its sampler now holds a permutation of 100 samples
    trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(), 0)
    before = trainer.state_dict()
    with pytest.raises(ValueError, match="does not match"):
        trainer.load_state_dict(other_model.state_dict())
    with pytest.raises(ValueError, match="sampler state does not fit"):
        trainer.load_state_dict(other_data.state_dict())
    assert torch.equal(trainer.state_dict()["epoch_order"], before["epoch_order"])


def test_label_map_flips_this_nodes_labels(digits: Task) -> None:
    flip = np.arange(digits.num_classes)[::-1].copy()  # y -> 9 - y
    trainer = Trainer(digits, whole_train_set(digits), TrainingSettings(), 0, label_map=flip)
    train_locally(trainer, 300)
    _, accuracy = trainer.evaluate()
    with torch.no_grad():
        predicted = trainer.model(digits.test.X).argmax(1).numpy()
    flipped_accuracy = float(np.mean(flip[predicted] == digits.test.y.numpy()))
    assert accuracy < 0.1
    assert flipped_accuracy > 0.85


@pytest.mark.parametrize(
    "label_map", [np.arange(9), np.arange(10) + 1, np.linspace(0, 9, 10), -np.arange(10)]
)
def test_bad_label_maps_are_refused(digits: Task, label_map: np.ndarray) -> None:
    with pytest.raises(ValueError, match="label_map"):
        Trainer(digits, whole_train_set(digits), TrainingSettings(), 0, label_map=label_map)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.0},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"batch_size": 0},
        {"batches_per_gradient": 0},
        {"weight_decay": -1.0},
        {"lr_schedule": "cosine"},
        {"torch_threads": 0},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TrainingSettings(**kwargs)


def test_bad_indices_are_refused(digits: Task) -> None:
    for indices in (np.array([], dtype=np.int64), np.array([0, len(digits.train)]), np.array([-1])):
        with pytest.raises(ValueError, match="indices"):
            Trainer(digits, indices, TrainingSettings(), 0)


# ----------------------------------------------------------- label-flipped gradients (ByzFL)


def _gradients(trainer: Trainer, steps: int, flipped_between: bool) -> list[bytes]:
    """The bytes of ``steps`` gradients (applied in turn), with or without
    ``flipped_gradient()`` calls after each one."""
    out = []
    for _ in range(steps):
        gradient = trainer.gradient()
        if flipped_between:
            trainer.flipped_gradient()
            trainer.flipped_gradient()
        out.append(gradient.tobytes())
        trainer.apply_gradient(gradient)
    out.append(trainer.parameters().tobytes())
    return out


@pytest.mark.parametrize(
    ("spec", "settings"),
    [
        ("digits-mlp", TrainingSettings(momentum=0.9, weight_decay=0.01, batches_per_gradient=2)),
        (f"{HERE}:dropout_task", TrainingSettings(momentum=0.5, batch_size=5)),
    ],
)
def test_flipped_gradients_leave_the_trainers_own_path_unchanged(
    spec: str, settings: TrainingSettings
) -> None:
    task = load_task(spec, seed=0)
    indices = np.arange(min(len(task.train), 200))
    plain = Trainer(task, indices, settings, node_seed=3)
    probed = Trainer(task, indices, settings, node_seed=3)
    assert _gradients(plain, 6, False) == _gradients(probed, 6, True)
    assert plain.statistics() == probed.statistics()
    plain_state, probed_state = plain.state_dict(), probed.state_dict()
    for key, value in plain_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, probed_state[key]), key
        elif isinstance(value, dict):
            assert all(torch.equal(v, probed_state[key][k]) for k, v in value.items()), key
        else:
            assert value == probed_state[key] or value != value, key  # NaN loss: equal too


def test_flipped_gradient_is_the_gradient_on_flipped_labels_of_the_same_batches(
    digits: Task,
) -> None:
    """ByzFL's flip y -> num_classes - 1 - y on the batches of the latest gradient(), with
    no momentum (digits-mlp has no dropout or BatchNorm, so eval mode changes nothing)."""
    settings = TrainingSettings(momentum=0.9, weight_decay=0.01, batches_per_gradient=2)
    flip = np.arange(digits.num_classes - 1, -1, -1)
    honest = Trainer(digits, whole_train_set(digits), settings, node_seed=4)
    # same sampler (node seed), no momentum: its gradient() is the flipped gradient
    reference = Trainer(
        digits,
        whole_train_set(digits),
        TrainingSettings(momentum=0.0, weight_decay=0.01, batches_per_gradient=2),
        node_seed=4,
        label_map=flip,
    )
    with pytest.raises(RuntimeError, match="gradient"):
        honest.flipped_gradient()
    for _ in range(3):
        gradient = honest.gradient()
        flipped = honest.flipped_gradient()
        expected = reference.gradient()
        assert flipped.dtype == np.float32 and flipped.shape == (honest.dim,)
        np.testing.assert_allclose(flipped, expected, rtol=1e-5, atol=1e-7)
        assert not np.allclose(flipped, gradient)
        honest.apply_gradient(gradient)
        reference.apply_gradient(gradient)  # same parameters for the next step
