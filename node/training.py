"""What a node learns and how it trains locally: the settings of node/tasks.py and
node/trainer.py.

Kept free of torch (the modules that use these settings import it), so that reading a
config file, checking it, or printing ``jungle node --help`` never loads it. The fields are
declared with :func:`protocol.settings.setting`: each carries its default, help line and
range once, for node configs, scenarios and flags alike (node/schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.settings import SettingsError, field_problems, setting

LR_SCHEDULES: Final = ("constant", "inverse_sqrt")
INNER_OPTIMIZERS: Final = ("sgd", "adamw")
#: [training] keys of earlier versions, and where they are now
TRAINING_MOVED: Final = {"local_steps": "[training] batches_per_gradient (same meaning)"}
DEVICES: Final = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """``[task]``: what is learnt (the same table in node configs and scenarios)."""

    #: the tasks that read local files under data_dir (node/datasets.py DATASET_NAMES)
    FILE_TASKS = ("mnist", "fashion-mnist", "cifar10", "npz")

    name: str = setting(
        "digits-mlp",
        "digits-mlp, digits-cnn, synthetic, mnist, fashion-mnist, cifar10, npz (these four "
        "read data_dir), or package.module:function",
        flag="--task",
    )
    data_dir: str = setting(
        "",
        "the folder (npz: or the .npz file) holding the dataset's files, relative to the "
        "current directory; nothing is downloaded",
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name:
            problems.append("name: must not be empty")
        elif self.name in self.FILE_TASKS and not self.data_dir:
            problems.append(f"data_dir: task {self.name} reads local files: set data_dir")
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """``[training]``: local learning on every node; the defaults learn digits-mlp well in
    ~100-200 steps (the same table in node configs and scenarios)."""

    lr: float = setting(0.3, "learning rate (at step t: lr x schedule(t))", above=0.0)
    lr_schedule: str = setting(
        "constant",
        "constant, or inverse_sqrt: lr / sqrt(1 + t / lr_decay_steps)",
        choices=LR_SCHEDULES,
    )
    lr_decay_steps: int = setting(100, "time scale of inverse_sqrt", minimum=1, unit="steps")
    momentum: float = setting(
        0.9,
        "beta of the worker-side EMA momentum, applied before agreement (0: none)",
        minimum=0.0,
        below=1.0,
    )
    batch_size: int = setting(32, "mini-batch size", minimum=1)
    batches_per_gradient: int = setting(
        1,
        "mini-batches whose gradients are averaged into one gradient (accumulation; "
        "was local_steps)",
        minimum=1,
    )
    inner_steps: int = setting(
        1,
        "H: local optimiser steps between two agreements (DiLoCo); the agreed vector is "
        "then the pseudo-gradient of the H steps",
        minimum=1,
        maximum=10_000,
        unit="steps",
    )
    inner_optimizer: str = setting(
        "sgd",
        "local optimiser: sgd (lr, EMA momentum, L2 weight_decay) or adamw (lr, betas "
        "0.9/0.999, decoupled weight_decay)",
        choices=INNER_OPTIMIZERS,
    )
    outer_lr: float = setting(
        1.0,
        "outer learning rate: the agreed pseudo-gradient moves the model by outer_lr x it",
        above=0.0,
    )
    outer_momentum: float = setting(
        0.0,
        "Nesterov momentum of the outer SGD that applies the agreed vector (0: none)",
        minimum=0.0,
        below=1.0,
    )
    device: str = setting(
        "auto",
        "where the model trains: cpu, cuda, or auto (cuda when available); vectors cross "
        "to the CPU once per agreement",
        choices=DEVICES,
    )
    weight_decay: float = setting(0.0, "L2 penalty added to the gradient", minimum=0.0)
    torch_threads: int = setting(
        1,
        "torch intra-op threads, set process-wide (the simulator always uses 1)",
        minimum=1,
    )
    eval_batch_size: int = setting(1024, "batch size of test-set evaluation", minimum=1)

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems)
