"""Datasets from local files, in their own formats, read with numpy alone; nothing is downloaded.

- ``mnist``, ``fashion-mnist``: the four IDX files (each also accepted gzipped, ``.gz``)
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, in ``data_dir`` or torchvision's ``data_dir/MNIST/raw``
  (``FashionMNIST/raw``). IDX: a big-endian header (magic ``0x00000803`` for unsigned-byte
  images of 3 dimensions, ``0x00000801`` for labels), one uint32 per dimension, the bytes.
- ``cifar10``: the binary version, ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
  ``test_batch.bin`` in ``data_dir`` or ``data_dir/cifar-10-batches-bin``; each a run of
  3073-byte records, a label byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
  rows of 32).
- ``npz``: one numpy archive holding ``x_train``, ``y_train``, ``x_test``, ``y_test``
  (``data_dir`` is the file, or a folder holding exactly one ``.npz``), loaded with
  ``allow_pickle=False``: an object array is refused, never unpickled.

The files' own train/test split is used. Pixels (uint8) become float32 in [0, 1] and images
``(N, C, H, W)``. A relative ``data_dir`` is relative to the current directory. Each problem
is a :class:`ValueError` of one line: the files expected and where they were looked for, or
the file and what is wrong with it.

The writers (:func:`write_idx`, :func:`write_mnist`, :func:`write_cifar10_batches`,
:func:`write_synthetic_cifar10`) produce the same formats, so tests and benchmarks can make
small or synthetic datasets that go through the very readers real files do.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

DATASET_NAMES: Final = ("mnist", "fashion-mnist", "cifar10", "npz")

IDX_IMAGES_MAGIC: Final = 0x00000803
IDX_LABELS_MAGIC: Final = 0x00000801
_IDX_UBYTE: Final = 0x08
MNIST_FILES: Final = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_SIDE: Final = 28
_TORCHVISION_FOLDERS: Final = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

CIFAR10_TRAIN_FILES: Final = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE: Final = "test_batch.bin"
CIFAR10_SUBFOLDER: Final = "cifar-10-batches-bin"
CIFAR10_SHAPE: Final = (3, 32, 32)
CIFAR10_RECORD_BYTES: Final = 1 + 3 * 32 * 32
CIFAR10_LABEL_NAMES: Final = "airplane automobile bird cat deer dog frog horse ship truck".split()

NPZ_KEYS: Final = ("x_train", "y_train", "x_test", "y_test")
#: classes of mnist, fashion-mnist and cifar10
IMAGE_CLASSES: Final = 10
#: the largest IDX or CIFAR-10 file (decompressed) a reader accepts; real ones are < 50 MB
FILE_BYTES_MAX: Final = 4 << 30  # 4 GiB


@dataclass(frozen=True, slots=True)
class SplitArrays:
    """A dataset's own split: ``x`` float32 ``(N, ...)`` (images ``(N, C, H, W)`` in [0, 1]),
    ``y`` int64 ``(N,)`` in ``[0, num_classes)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_dataset(name: str, data_dir: str | Path) -> SplitArrays:
    """Dataset ``name`` (one of :data:`DATASET_NAMES`) from the files under ``data_dir``."""
    return read_dataset(name, dataset_files(name, data_dir))


def dataset_files(name: str, data_dir: str | Path) -> tuple[Path, ...]:
    """The files dataset ``name`` reads under ``data_dir``, in :func:`read_dataset`'s order;
    ValueError naming the files expected and where they were looked for if any is missing."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)}")
    root = Path(data_dir).expanduser().absolute()
    if not root.exists():
        raise ValueError(f"{name}: data_dir {root} does not exist (nothing is downloaded)")
    if name == "npz":
        return (_npz_file(root),)
    if not root.is_dir():
        raise ValueError(f"{name}: data_dir {root} is not a directory")
    if name == "cifar10":
        names = [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE]
        return _find(name, names, [root, root / CIFAR10_SUBFOLDER], gz=False)
    folders = [root, root / _TORCHVISION_FOLDERS[name] / "raw"]
    return _find(name, list(MNIST_FILES), folders, gz=True)


def _find(name: str, names: list[str], folders: list[Path], *, gz: bool) -> tuple[Path, ...]:
    """The files ``names`` from the first folder holding them all (each also as .gz)."""
    best: list[str] = names
    for folder in folders:
        found = [_present(folder / file, gz) for file in names]
        if all(found):
            return tuple(path for path in found if path is not None)
        missing = [file for file, path in zip(names, found, strict=True) if path is None]
        if len(missing) < len(best):
            best = missing
    suffix = " (each also as .gz)" if gz else ""
    places = " or ".join(str(folder) for folder in folders)
    raise ValueError(
        f"{name}: missing {', '.join(best)}{suffix} in {places} (nothing is downloaded: "
        f"put the dataset's files there)"
    )


def _present(path: Path, gz: bool) -> Path | None:
    if path.is_file():
        return path
    zipped = path.with_name(path.name + ".gz")
    return zipped if gz and zipped.is_file() else None


def _npz_file(root: Path) -> Path:
    if root.is_file():
        return root
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        which = "no .npz file" if not found else f"{len(found)} .npz files"
        listed = f" ({', '.join(path.name for path in found)})" if found else ""
        raise ValueError(
            f"npz: {which} in {root}{listed}: data_dir must be one .npz holding "
            f"{', '.join(NPZ_KEYS)}, or a folder holding exactly one"
        )
    return found[0]


def read_dataset(name: str, files: Sequence[Path]) -> SplitArrays:
    """Dataset ``name`` from ``files`` as :func:`dataset_files` lists them."""
    if name == "npz":
        return read_npz(files[0])
    if name == "cifar10":
        x_train, y_train = read_cifar10_batches(files[:-1])
        x_test, y_test = read_cifar10_batches(files[-1:])
        return SplitArrays(x_train, y_train, x_test, y_test, IMAGE_CLASSES)
    x_train, y_train = _read_mnist_pair(files[0], files[1])
    x_test, y_test = _read_mnist_pair(files[2], files[3])
    return SplitArrays(x_train, y_train, x_test, y_test, IMAGE_CLASSES)


# ------------------------------------------------------------------------------------ IDX


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    """The uint8 array of IDX file ``path`` (``.gz``: gzipped); ValueError if its magic is
    not ``magic`` (when given) or its size does not match its header."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, not even an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    ndim = found & 0xFF
    if (magic is not None and found != magic) or found >> 8 != _IDX_UBYTE or ndim == 0:
        expected = f"0x{magic:08x}" if magic is not None else "0x000008NN (unsigned bytes)"
        raise ValueError(f"{path}: bad IDX magic 0x{found:08x}, expected {expected}")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise ValueError(f"{path}: truncated in the IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_bytes])
    expected_bytes = int(np.prod(shape, dtype=np.int64))
    held = len(data) - header_bytes
    if held != expected_bytes:
        problem = "truncated" if held < expected_bytes else "trailing bytes"
        dims = "x".join(map(str, shape))
        raise ValueError(
            f"{path}: {problem}: the header says {dims} = {expected_bytes} bytes, "
            f"the file holds {held}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write uint8 ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX files here hold uint8 arrays, got {array.dtype} {array.shape}")
    header = struct.pack(f">I{array.ndim}I", (_IDX_UBYTE << 8) | array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def write_mnist(
    directory: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    gzipped: bool = False,
) -> tuple[Path, ...]:
    """The four MNIST IDX files in ``directory`` (made if needed); images uint8 (N, H, W)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzipped else ""
    arrays = (images, labels, test_images, test_labels)
    return tuple(
        write_idx(directory / (name + suffix), np.asarray(array, dtype=np.uint8))
        for name, array in zip(MNIST_FILES, arrays, strict=True)
    )


def _read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        dims = "x".join(map(str, images.shape[1:]))
        raise ValueError(f"{images_path}: images are {dims}, expected {MNIST_SIDE}x{MNIST_SIDE}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    _check_labels(labels_path, labels)
    return _scaled(images[:, None]), labels.astype(np.int64)


# ------------------------------------------------------------------------------- CIFAR-10


def read_cifar10_batches(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 3, 32, 32) in [0, 1] and labels int64 of CIFAR-10 binary batches."""
    sizes = [_file_bytes(path) for path in paths]
    for path, size in zip(paths, sizes, strict=True):
        if size == 0 or size % CIFAR10_RECORD_BYTES:
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte "
                f"CIFAR-10 records (a label byte, 3072 pixel bytes): truncated or not a batch"
            )
    total = sum(sizes) // CIFAR10_RECORD_BYTES
    images = np.empty((total, *CIFAR10_SHAPE), dtype=np.float32)
    labels = np.empty(total, dtype=np.int64)
    start = 0
    for path in paths:
        records = np.frombuffer(_read_bytes(path), dtype=np.uint8)
        records = records.reshape(-1, CIFAR10_RECORD_BYTES)
        _check_labels(path, records[:, 0], what="record")
        end = start + len(records)
        labels[start:end] = records[:, 0]
        pixels = records[:, 1:].reshape(-1, *CIFAR10_SHAPE)
        np.divide(pixels, np.float32(255), out=images[start:end], dtype=np.float32)
        start = end
    return images, labels


def write_cifar10_batches(
    directory: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> tuple[Path, ...]:
    """CIFAR-10's binary files in ``directory`` (made if needed): the train images, uint8
    (N, 3, 32, 32) with N >= 5, cut into the five ``data_batch_*.bin``, the test ones into
    ``test_batch.bin``; and ``batches.meta.txt``, the label names, as the real folder has."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(images) < len(CIFAR10_TRAIN_FILES):
        raise ValueError(f"need at least {len(CIFAR10_TRAIN_FILES)} train images, one a batch")
    chunks = zip(
        np.array_split(np.asarray(images), len(CIFAR10_TRAIN_FILES)),
        np.array_split(np.asarray(labels), len(CIFAR10_TRAIN_FILES)),
        strict=True,
    )
    pairs = [*chunks, (test_images, test_labels)]
    paths = tuple(directory / name for name in [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE])
    for path, (batch, batch_labels) in zip(paths, pairs, strict=True):
        batch, batch_labels = np.asarray(batch), np.asarray(batch_labels)
        if batch.dtype != np.uint8 or batch.shape[1:] != CIFAR10_SHAPE:
            raise ValueError(f"CIFAR-10 images are uint8 (N, 3, 32, 32), got {batch.shape}")
        if batch_labels.shape != (len(batch),):
            raise ValueError(f"{len(batch)} images need as many labels, got {batch_labels.shape}")
        records = np.empty((len(batch), CIFAR10_RECORD_BYTES), dtype=np.uint8)
        records[:, 0] = batch_labels
        records[:, 1:] = batch.reshape(len(batch), -1)
        path.write_bytes(records.tobytes())
    (directory / "batches.meta.txt").write_text("\n".join(CIFAR10_LABEL_NAMES) + "\n")
    return paths


def synthetic_cifar10(
    samples: int, seed: int = 0, *, noise: float = 0.25, stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` learnable CIFAR-shaped images (uint8 (N, 3, 32, 32)) and labels (uint8).

    Class k is a colour plus a sinusoidal grating of its own orientation and frequency;
    each image gets a random phase, contrast and colour shift, and Gaussian pixel noise of
    standard deviation ``noise``. The classes depend on ``seed`` alone, the images on
    ``(seed, stream)``: a train and a test set drawn with two streams share their classes.
    """
    classes = np.random.default_rng([seed, 0])
    colours = classes.uniform(0.25, 0.75, (IMAGE_CLASSES, 3, 1, 1)).astype(np.float32)
    angles = np.pi * (np.arange(IMAGE_CLASSES) + classes.uniform(-0.2, 0.2, IMAGE_CLASSES))
    angles /= IMAGE_CLASSES
    cycles = classes.integers(2, 5, IMAGE_CLASSES)

    rng = np.random.default_rng([seed, 1 + stream])
    labels = rng.integers(0, IMAGE_CLASSES, samples).astype(np.uint8)
    side = CIFAR10_SHAPE[1]
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    images = np.empty((samples, *CIFAR10_SHAPE), dtype=np.uint8)
    chunk = 4096  # bounds the float32 temporaries at ~50 MB
    for start in range(0, samples, chunk):
        k = labels[start : start + chunk].astype(np.int64)
        count = len(k)
        angle = angles[k][:, None, None]
        wave = 2 * np.pi * cycles[k][:, None, None] / side
        phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
        grating = np.sin(wave * (cols * np.cos(angle) + rows * np.sin(angle)) + phase)
        contrast = rng.uniform(0.15, 0.3, (count, 1, 1, 1))
        shift = rng.normal(0.0, 0.08, (count, 3, 1, 1))
        pixels = rng.standard_normal((count, *CIFAR10_SHAPE), dtype=np.float32)
        pixels *= np.float32(noise)
        pixels += colours[k]
        pixels += (shift + contrast * grating[:, None]).astype(np.float32)
        np.clip(pixels, 0.0, 1.0, out=pixels)
        pixels *= np.float32(255)
        images[start : start + count] = np.rint(pixels)
    return images, labels


def write_synthetic_cifar10(
    directory: str | Path,
    train_samples: int = 5000,
    test_samples: int = 1000,
    seed: int = 0,
    *,
    noise: float = 0.25,
) -> Path:
    """A synthetic dataset (:func:`synthetic_cifar10`) written as CIFAR-10's binary files
    in ``directory``, for ``task = "cifar10"`` with ``data_dir`` = ``directory``."""
    train = synthetic_cifar10(train_samples, seed, noise=noise, stream=0)
    test = synthetic_cifar10(test_samples, seed, noise=noise, stream=1)
    write_cifar10_batches(directory, *train, *test)
    return Path(directory)


# ------------------------------------------------------------------------------------ npz


def read_npz(path: Path) -> SplitArrays:
    """The four arrays of ``path``, checked: x numeric (uint8 is scaled to [0, 1]), y
    integer class indices (N,) or (N, 1); images (N, H, W) become (N, 1, H, W), and
    channels-last (N, H, W, C) with C in 1, 3, 4 becomes (N, C, H, W)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:  # numpy refusing a pickle: not an array file at all
        raise ValueError(f"{path}: not an .npz archive ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive: {error}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of {NPZ_KEYS}")
    arrays: dict[str, np.ndarray] = {}
    with loaded as archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            held = ", ".join(archive.files) or "nothing"
            raise ValueError(f"{path}: missing {', '.join(missing)} (it holds {held})")
        for key in NPZ_KEYS:
            arrays[key] = _npz_member(path, archive, key)
    x_train, y_train = _npz_pair(path, "train", arrays["x_train"], arrays["y_train"])
    x_test, y_test = _npz_pair(path, "test", arrays["x_test"], arrays["y_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{path}: x_train rows are {x_train.shape[1:]}, x_test rows {x_test.shape[1:]}"
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise ValueError(f"{path}: labels hold one class only; a classifier needs two")
    return SplitArrays(x_train, y_train, x_test, y_test, num_classes)


def _npz_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path}: {key} is an object array, refused (npz files are loaded without "
                f"unpickling): save plain numeric arrays"
            ) from None
        raise ValueError(f"{path}: {key}: {error}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{path}: {key} is corrupt: {error}") from None


def _npz_pair(path: Path, which: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    where = f"{path}: x_{which}, y_{which}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"{where}: need x (N, D), (N, H, W) or (N, C, H, W) and y (N,) with N > 0, "
            f"got {x.shape} and {y.shape}"
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{where}: x must be numeric, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: y must hold integer class indices, got {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"{where}: label {int(y.min())} is negative")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # channels-last, as Keras saves images
    if x.dtype == np.uint8:
        features = _scaled(x)
    else:
        features = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(features).all():
            raise ValueError(f"{where}: x holds NaN or infinity")
    return features, y.astype(np.int64)


# ---------------------------------------------------------------------------- shared parts


def _check_labels(path: Path, labels: np.ndarray, what: str = "label") -> None:
    bad = np.flatnonzero(labels >= IMAGE_CLASSES)
    if len(bad):
        index = int(bad[0])
        raise ValueError(
            f"{path}: {what} {index}: label {int(labels[index])} out of range "
            f"0..{IMAGE_CLASSES - 1} ({len(bad)} such)"
        )


def _scaled(pixels: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = np.divide(pixels, np.float32(255), dtype=np.float32)
    return scaled


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror}") from None


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (decompressed for ``.gz``), at most :data:`FILE_BYTES_MAX`."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                data = file.read(FILE_BYTES_MAX + 1)
        else:
            if _file_bytes(path) > FILE_BYTES_MAX:
                raise ValueError(f"{path}: larger than {FILE_BYTES_MAX >> 30} GiB")
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a valid gzip file: {error}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > FILE_BYTES_MAX:
        raise ValueError(f"{path}: larger than {FILE_BYTES_MAX >> 30} GiB decompressed")
    return data
