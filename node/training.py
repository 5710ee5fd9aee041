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


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """``[task]``: what is learnt (the same table in node configs and scenarios)."""

    name: str = setting(
        "digits-mlp",
        "digits-mlp, digits-cnn, synthetic, or package.module:function",
        flag="--task",
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise SettingsError(["name: must not be empty"])


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
    local_steps: int = setting(
        1, "mini-batches whose gradients are averaged into one proposed gradient", minimum=1
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
