"""Datasets from local files: each format round-trips through its writer and reader, every
broken file is one readable ValueError, and the tasks built on them train and simulate."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from node.config import load_config
from node.datasets import (
    DATASET_NAMES,
    load_dataset,
    synthetic_cifar10,
    write_cifar10_batches,
    write_idx,
    write_mnist,
    write_synthetic_cifar10,
)
from node.models import image_cnn
from node.tasks import DATASET_TASKS, load_task
from node.trainer import Trainer
from node.training import TaskSettings, TrainingSettings
from sim.engine import run_scenario
from sim.scenario import Scenario, ScenarioError

TRAIN, TEST = 50, 20


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def images(count: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return rng.integers(0, 256, (count, *shape), dtype=np.uint8), labels


def mnist_arrays() -> tuple[np.ndarray, ...]:
    return (*images(TRAIN, (28, 28), 1), *images(TEST, (28, 28), 2))


def cifar_arrays() -> tuple[np.ndarray, ...]:
    return (*images(TRAIN, (3, 32, 32), 3), *images(TEST, (3, 32, 32), 4))


def one_line_error(name: str, data_dir: Path) -> str:
    with pytest.raises(ValueError) as caught:
        load_dataset(name, data_dir)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("gzipped", [False, True])
def test_mnist_idx_files_round_trip(tmp_path: Path, gzipped: bool) -> None:
    x, y, x_test, y_test = mnist_arrays()
    written = write_mnist(tmp_path, x, y, x_test, y_test, gzipped=gzipped)
    assert all(path.name.endswith(".gz") == gzipped for path in written)

    data = load_dataset("mnist", tmp_path)

    assert data.x_train.shape == (TRAIN, 1, 28, 28) and data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.x_train[:, 0], x / np.float32(255))
    np.testing.assert_array_equal(data.x_test[:, 0], x_test / np.float32(255))
    np.testing.assert_array_equal(data.y_train, y)
    assert data.y_test.dtype == np.int64 and data.num_classes == 10


def test_fashion_mnist_is_found_in_torchvisions_layout(tmp_path: Path) -> None:
    x, y, x_test, y_test = mnist_arrays()
    write_mnist(tmp_path / "FashionMNIST" / "raw", x, y, x_test, y_test)
    data = load_dataset("fashion-mnist", tmp_path)
    np.testing.assert_array_equal(data.y_test, y_test)


def test_idx_header_is_the_real_formats(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8)).read_bytes()
    assert raw == bytes.fromhex("0000080100000003") + bytes([3, 1, 4])


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar10_binary_batches_round_trip(tmp_path: Path, subfolder: str) -> None:
    x, y, x_test, y_test = cifar_arrays()
    paths = write_cifar10_batches(tmp_path / subfolder, x, y, x_test, y_test)
    assert [path.stat().st_size for path in paths] == [10 * 3073] * 5 + [TEST * 3073]
    first = paths[0].read_bytes()[:3073]  # a label byte, then red, green, blue planes
    assert first[0] == y[0] and first[1 : 1 + 1024] == x[0, 0].tobytes()

    data = load_dataset("cifar10", tmp_path)

    assert data.x_train.shape == (TRAIN, 3, 32, 32)
    np.testing.assert_array_equal(data.x_train, x / np.float32(255))
    np.testing.assert_array_equal(data.y_train, y)
    np.testing.assert_array_equal(data.x_test, x_test / np.float32(255))
    assert 0.0 <= data.x_test.min() and data.x_test.max() <= 1.0


def test_npz_images_features_and_layouts(tmp_path: Path) -> None:
    x, y, x_test, y_test = mnist_arrays()
    np.savez(tmp_path / "digits.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    data = load_dataset("npz", tmp_path)  # the one .npz in the folder
    assert data.x_train.shape == (TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(data.x_train[:, 0], x / np.float32(255))

    channels_last = np.moveaxis(cifar_arrays()[0], 1, -1)  # (N, 32, 32, 3), as Keras saves
    path = tmp_path / "other" / "rgb.npz"
    path.parent.mkdir()
    np.savez(path, x_train=channels_last, y_train=y[:, None], x_test=channels_last, y_test=y)
    data = load_dataset("npz", path)
    np.testing.assert_array_equal(data.x_train, cifar_arrays()[0] / np.float32(255))
    assert data.y_train.shape == (TRAIN,)

    features = np.random.default_rng(0).normal(size=(TRAIN, 6))
    np.savez(path, x_train=features, y_train=y % 3, x_test=features, y_test=y % 3)
    data = load_dataset("npz", path)
    assert data.x_train.dtype == np.float32 and data.num_classes == 3
    np.testing.assert_allclose(data.x_train, features, rtol=1e-6)


# ------------------------------------------------------------------------------ errors


def test_missing_files_are_listed_with_where_they_were_looked_for(tmp_path: Path) -> None:
    write_mnist(tmp_path, *mnist_arrays())
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    message = one_line_error("mnist", tmp_path)
    assert "missing t10k-labels-idx1-ubyte (each also as .gz)" in message
    assert "train-images" not in message and str(tmp_path) in message

    message = one_line_error("cifar10", tmp_path)
    assert "data_batch_1.bin" in message and "test_batch.bin" in message
    assert str(tmp_path / "cifar-10-batches-bin") in message
    assert "does not exist" in one_line_error("mnist", tmp_path / "nowhere")
    assert "no .npz file in" in one_line_error("npz", tmp_path)


def test_corrupt_idx_files_name_the_file_and_the_problem(tmp_path: Path) -> None:
    write_mnist(tmp_path, *mnist_arrays())
    images_file = tmp_path / "train-images-idx3-ubyte"
    labels_file = tmp_path / "train-labels-idx1-ubyte"
    good = images_file.read_bytes()

    images_file.write_bytes(labels_file.read_bytes())
    message = one_line_error("mnist", tmp_path)
    assert message == f"{images_file}: bad IDX magic 0x00000801, expected 0x00000803"

    images_file.write_bytes(good[:-100])
    message = one_line_error("mnist", tmp_path)
    assert message.startswith(f"{images_file}: truncated: the header says 50x28x28 = 39200")

    write_idx(images_file, np.zeros((TRAIN, 27, 27), dtype=np.uint8))
    assert "images are 27x27, expected 28x28" in one_line_error("mnist", tmp_path)

    images_file.write_bytes(good)
    write_idx(labels_file, np.full(TRAIN - 1, 3, dtype=np.uint8))
    assert "holds 50 images but" in one_line_error("mnist", tmp_path)

    write_idx(labels_file, np.r_[np.zeros(TRAIN - 1), 10].astype(np.uint8))
    message = one_line_error("mnist", tmp_path)
    assert message == f"{labels_file}: label 49: label 10 out of range 0..9 (1 such)"


def test_a_broken_gzip_is_named(tmp_path: Path) -> None:
    write_mnist(tmp_path, *mnist_arrays(), gzipped=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00" * 400)[:-12])
    assert one_line_error("mnist", tmp_path).startswith(f"{path}: not a valid gzip file")


def test_corrupt_cifar_batches_name_the_file(tmp_path: Path) -> None:
    x, y, x_test, y_test = cifar_arrays()
    paths = write_cifar10_batches(tmp_path, x, y, x_test, y_test)
    paths[2].write_bytes(paths[2].read_bytes()[:-1])
    message = one_line_error("cifar10", tmp_path)
    assert message.startswith(f"{paths[2]}: 30729 bytes is not a whole number of 3073-byte")

    y_test = y_test.copy()
    y_test[5] = 12
    write_cifar10_batches(tmp_path, x, y, x_test, y_test)
    message = one_line_error("cifar10", tmp_path)
    assert message == f"{paths[-1]}: record 5: label 12 out of range 0..9 (1 such)"


def test_bad_npz_files_are_refused(tmp_path: Path) -> None:
    x, y, x_test, y_test = mnist_arrays()
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test)
    assert one_line_error("npz", path) == (
        f"{path}: missing y_test (it holds x_train, y_train, x_test)"
    )

    objects = np.array([{"a": 1}] * TEST, dtype=object)
    np.savez(path, x_train=x, y_train=y, x_test=objects, y_test=y_test)
    message = one_line_error("npz", path)
    assert message.startswith(f"{path}: x_test is an object array, refused")

    np.savez(path, x_train=x, y_train=y.astype(np.float32), x_test=x_test, y_test=y_test)
    assert "y must hold integer class indices" in one_line_error("npz", path)

    np.savez(tmp_path / "second.npz", x_train=x)
    assert "2 .npz files in" in one_line_error("npz", tmp_path)

    path.write_bytes(b"not numpy at all")
    assert one_line_error("npz", path).startswith(f"{path}: not an .npz archive")


# ---------------------------------------------------------------------- tasks and models


def test_the_file_tasks_are_the_settings_file_tasks() -> None:
    assert DATASET_TASKS == DATASET_NAMES == TaskSettings.FILE_TASKS


def test_the_cnn_is_large_enough_for_the_benchmark() -> None:
    cnn = image_cnn((3, 32, 32), 10)
    assert sum(p.numel() for p in cnn.parameters()) == 1_083_434
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert image_cnn((1, 5, 3), 4)(torch.zeros(1, 1, 5, 3)).shape == (1, 4)  # tiny images


@pytest.mark.parametrize(("name", "dim"), [("mnist", 624_394), ("cifar10", 1_083_434)])
def test_a_trainer_steps_on_a_file_task(tmp_path: Path, name: str, dim: int) -> None:
    if name == "mnist":
        write_mnist(tmp_path, *mnist_arrays(), gzipped=True)
    else:
        write_cifar10_batches(tmp_path / "cifar-10-batches-bin", *cifar_arrays())
    task = load_task(name, 0, tmp_path)
    trainer = Trainer(task, np.arange(TRAIN), TrainingSettings(lr=0.05), node_seed=0)
    before = trainer.parameters().copy()

    gradient = trainer.gradient()
    trainer.apply_gradient(gradient)

    assert trainer.dim == dim and np.isfinite(trainer.train_loss)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
    assert not np.array_equal(trainer.parameters(), before)


def test_a_dataset_is_read_once_until_its_files_change(tmp_path: Path) -> None:
    write_mnist(tmp_path, *mnist_arrays())
    first, again = load_task("mnist", 0, tmp_path), load_task("mnist", 1, tmp_path)
    assert again.train.X is first.train.X  # shared, not read again
    x, y, x_test, y_test = mnist_arrays()
    write_mnist(tmp_path, 255 - x, y, x_test, y_test)
    changed = load_task("mnist", 0, tmp_path)
    np.testing.assert_allclose(changed.train.X.numpy(), 1 - first.train.X.numpy(), atol=1e-6)


def test_data_dir_goes_with_file_tasks_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task 'mnist' reads local files: set data_dir"):
        load_task("mnist", 0)
    with pytest.raises(ValueError, match="task 'digits-mlp' reads no files"):
        load_task("digits-mlp", 0, tmp_path)
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict({"task": "cifar10"})
    assert caught.value.problems == (
        "[task] data_dir: task cifar10 reads local files: set data_dir",
    )


def test_node_configs_take_data_dir_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nid = 0\nkey_file = "k"\nroster = "r.toml"\nf = 1\n')
    flags = {"task.name": "mnist", "task.data_dir": "data/mnist"}  # --task, --data-dir
    settings = load_config(config, flags).task
    assert settings == TaskSettings("mnist", "data/mnist")

    write_mnist(tmp_path / "data" / "mnist", *mnist_arrays())
    monkeypatch.chdir(tmp_path)
    assert len(load_task(settings.name, 0, settings.data_dir).test) == TEST


def test_a_scenario_simulates_a_file_task(tmp_path: Path) -> None:
    write_mnist(tmp_path, *mnist_arrays())
    task = {"name": "mnist", "data_dir": str(tmp_path)}
    scenario = Scenario.from_dict({"n": 4, "f": 1, "steps": 1, "eval_every": 1, "task": task})
    assert scenario.task == TaskSettings("mnist", str(tmp_path))

    summary = run_scenario(scenario, None, seed=0, progress=False)

    assert summary.completed and all(steps == 1 for steps in summary.honest_steps_done.values())
    assert 0.0 <= summary.honest_accuracy_min <= 1.0


def test_synthetic_cifar_is_seeded_and_learnable(tmp_path: Path) -> None:
    x, y = synthetic_cifar10(200, seed=5)
    again, labels_again = synthetic_cifar10(200, seed=5)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(y, labels_again)
    write_synthetic_cifar10(tmp_path, train_samples=1000, test_samples=200, seed=5)
    data = load_dataset("cifar10", tmp_path)
    assert set(np.unique(data.y_train)) == set(range(10))
    # The classes are shared by the train and test streams: even the nearest class-mean
    # image (no learning at all) is far above chance (10%).
    means = np.stack([data.x_train[data.y_train == k].mean(0) for k in range(10)])
    distances = ((data.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    accuracy = float((distances.argmin(1) == data.y_test).mean())
    assert accuracy > 0.5


def test_process_mode_gives_nodes_an_absolute_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim.process_setup import NodeFiles, node_config

    monkeypatch.chdir(tmp_path)
    scenario = Scenario.from_dict({"n": 4, "f": 1, "task": {"name": "npz", "data_dir": "d.npz"}})
    files = NodeFiles(0, True, Path("k"), Path("c"), Path("m"), Path("l"), None)
    written = node_config(scenario, files, None, {"model": "constant", "delay_s": 0.01})
    assert written["task"] == {"name": "npz", "data_dir": str(tmp_path / "d.npz")}
