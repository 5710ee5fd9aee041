"""Checkpoints: atomic writes, faithful resume, refusal of foreign or hostile files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from node.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from node.tasks import load_task
from node.trainer import Trainer
from node.training import TrainingSettings

SESSION = "ab" * 32
KEY = "public-key-b64"
DIGEST = "resume-digest"


def trainer(seed: int = 0) -> Trainer:
    task = load_task("synthetic", 1)
    return Trainer(task, np.arange(200), TrainingSettings(batch_size=16), node_seed=seed)


def checkpoint_of(learner: Trainer, step: int) -> Checkpoint:
    return Checkpoint(step, SESSION, KEY, DIGEST, learner.state_dict())


def test_a_resumed_trainer_continues_exactly_where_the_saved_one_was(tmp_path: Path) -> None:
    original = trainer()
    for _ in range(3):
        original.apply_gradient(original.gradient())
    store = CheckpointStore(tmp_path, node_id=2)
    store.save(checkpoint_of(original, step=3))

    loaded = CheckpointStore(tmp_path, node_id=2).load()
    assert loaded is not None and loaded.step == 3
    assert (loaded.session_id_hex, loaded.public_key_b64, loaded.resume_digest) == (
        SESSION,
        KEY,
        DIGEST,
    )
    resumed = trainer()
    resumed.load_state_dict(loaded.trainer_state)
    # Same parameters now, and the same next gradient (sampler and momentum restored).
    np.testing.assert_array_equal(resumed.parameters(), original.parameters())
    np.testing.assert_array_equal(resumed.gradient(), original.gradient())
    assert store.path == tmp_path / "node-2.pt"
    assert store.statistics().saves == 1 and store.statistics().last_step == 3


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "absent", 0).load() is None


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, 0)
    store.save(Checkpoint(5, SESSION, KEY, DIGEST, {"weights": torch.ones(3)}))

    def torn_write(obj: object, file: object) -> None:
        file.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError, match="No space left"):
        store.save(Checkpoint(10, SESSION, KEY, DIGEST, {"weights": torch.zeros(3)}))

    assert os.listdir(tmp_path) == ["node-0.pt"]
    kept = store.load()
    assert kept is not None and kept.step == 5
    assert torch.equal(kept.trainer_state["weights"], torch.ones(3))


class Boom:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize("content", [b"junk", b"not a checkpoint at all", b"PK\x03\x04", None])
def test_garbage_and_hostile_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    monkeypatch.chdir(tmp_path)
    store = CheckpointStore(tmp_path, 0)
    if content is None:  # a .pt file whose pickle would call os.system if unpickled naively
        torch.save({"format": 1, "trap": Boom()}, store.path)
    else:
        store.path.write_bytes(content)

    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        store.load()
    assert not (tmp_path / "pwned.txt").exists()


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, 0)
    torch.save({"format": 99, "step": 1}, store.path)
    with pytest.raises(CheckpointError, match="not a jungle checkpoint of format 1"):
        store.load()
    torch.save({"format": 1, "step": "one"}, store.path)
    with pytest.raises(CheckpointError, match="field 'step' is missing or malformed"):
        store.load()


@pytest.mark.parametrize(
    ("session", "key", "digest", "reason"),
    [
        ("cd" * 32, KEY, DIGEST, "another session or roster"),
        (SESSION, "someone-else", DIGEST, "another node key"),
        (SESSION, KEY, "other", "another task, data split or node id"),
    ],
)
def test_a_checkpoint_must_belong_to_this_node_session_and_task(
    tmp_path: Path, session: str, key: str, digest: str, reason: str
) -> None:
    store = CheckpointStore(tmp_path, 0)
    saved = Checkpoint(1, SESSION, KEY, DIGEST, {})

    store.check_belongs(saved, session_id_hex=SESSION, public_key_b64=KEY, digest=DIGEST)
    with pytest.raises(CheckpointError, match=reason):
        store.check_belongs(saved, session_id_hex=session, public_key_b64=key, digest=digest)
