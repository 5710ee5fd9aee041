"""Settings as data: one frozen dataclass per concept, each field carrying its own rules.

A concept owns its settings (the protocol's here, training's in node/trainer.py, ...): one
frozen dataclass whose fields are declared with :func:`setting`, which records the default,
a help line, the range or choices and the unit. That one declaration is where the default
lives, where validation comes from (:func:`field_problems`, called by each dataclass's
``__post_init__``), and what node/schema.py reads to parse TOML tables, derive command-line
flags and write the docs' tables. Adding a knob is adding a field.

Nothing here parses files or knows about flags: it is plain data with checks, so the pure
protocol core can own its settings without importing the node.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Final

from protocol.aggregate import AGGREGATORS, PRE_AGGREGATORS, tolerance_problem
from protocol.core import GradientSchedule, ProtocolConfig, RoundSchedule
from protocol.encoding import ENCODINGS

#: the key under which a field's :class:`SettingInfo` sits in its metadata
METADATA_KEY: Final = "jungle.setting"
#: the value of ``gradient_rounds`` that selects ceil(log2(t + 1)) rounds at step t
GRADIENT_ROUNDS_LOG2: Final = "log2"


class SettingsError(ValueError):
    """Settings that cannot be used; ``problems`` holds one line per problem, each
    starting with the field's name (``"model_rounds: must be >= 0, got -1"``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """What a setting is: its help line and the rules a value must follow."""

    help: str
    unit: str = ""
    #: inclusive bounds
    minimum: float | None = None
    maximum: float | None = None
    #: exclusive bounds
    above: float | None = None
    below: float | None = None
    #: allowed string values (a field may also take numbers: ``gradient_rounds``)
    choices: tuple[str, ...] = ()
    #: the ``jungle node`` flag, when it is not ``--`` plus the name with dashes
    flag: str | None = None
    #: real nodes accept only this value (a simulation may use others), e.g. crypto = true
    nodes_require: Any = None
    #: why real nodes require it (the one line they refuse other values with)
    nodes_require_why: str = ""


def setting(
    default: Any,
    help: str,
    **rules: Any,
) -> Any:
    """A dataclass field with its :class:`SettingInfo` (see the module docstring)."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: SettingInfo(help, **rules)})


def info(field: dataclasses.Field[Any]) -> SettingInfo:
    found = field.metadata.get(METADATA_KEY)
    if not isinstance(found, SettingInfo):
        raise TypeError(f"field {field.name} is not declared with setting()")
    return found


def is_setting(field: dataclasses.Field[Any]) -> bool:
    return isinstance(field.metadata.get(METADATA_KEY), SettingInfo)


def settings_fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of ``cls`` declared with :func:`setting`, in declaration order (a class
    may hold other fields too: a scenario's tables)."""
    return tuple(field for field in dataclasses.fields(cls) if is_setting(field))


def rule_problem(value: Any, rules: SettingInfo) -> str | None:
    """Why ``value`` breaks ``rules`` (an already type-checked value), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, tuple):  # a list of names: each one must be a choice
        for item in value:
            if not isinstance(item, str):
                return f"expected a list of strings, got {item!r} in it"
            if rules.choices and item not in rules.choices:
                return f"expected names among {', '.join(rules.choices)}, got {item!r}"
        return None
    if isinstance(value, str):
        if rules.choices and value not in rules.choices:
            return f"expected one of {', '.join(rules.choices)}, got {value!r}"
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if rules.minimum is not None and value < rules.minimum:
            return f"must be >= {rules.minimum:g}, got {value}"
        if rules.maximum is not None and value > rules.maximum:
            return f"must be <= {rules.maximum:g}, got {value}"
        if rules.above is not None and value <= rules.above:
            return f"must be > {rules.above:g}, got {value}"
        if rules.below is not None and value >= rules.below:
            return f"must be < {rules.below:g}, got {value}"
    return None


def field_problems(instance: Any) -> list[str]:
    """Every field of ``instance`` that breaks its rules, one line each."""
    problems = []
    for field in settings_fields(instance):
        problem = rule_problem(getattr(instance, field.name), info(field))
        if problem is not None:
            problems.append(f"{field.name}: {problem}")
    return problems


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """``[protocol]``: how nodes agree (the same table in node configs and scenarios)."""

    aggregator: str = setting(
        "trimmed_mean",
        "how a round combines the vectors held; mean is the non-robust baseline",
        choices=tuple(sorted(AGGREGATORS)),
    )
    pre_aggregators: tuple[str, ...] = setting(
        (),
        "rules applied in order before the aggregator, as ByzFL's pre_agg_list: e.g. "
        '["nnm"] (a flag takes nnm,arc); empty: none',
        choices=tuple(sorted(PRE_AGGREGATORS)),
    )
    gradient_rounds: int | str = setting(
        GRADIENT_ROUNDS_LOG2,
        'rounds of gradient agreement: "log2" = ceil(log2(t+1)) at step t (heterogeneous '
        "data), or a constant count",
        minimum=1,
        choices=(GRADIENT_ROUNDS_LOG2,),
    )
    model_rounds: int = setting(1, "rounds of model agreement per step; 0 skips it", minimum=0)
    rounds_max: int = setting(8, "cap on rounds per agreement", minimum=1, maximum=64)
    steps_ahead_max: int = setting(
        4,
        "messages further ahead than this are dropped (and counted); a step past the "
        "run's end is a fault",
        minimum=0,
        unit="steps",
    )
    steps_retained: int = setting(
        2,
        "a node keeps serving this many steps behind its own; f+1 peers beyond that make "
        "a node jump to them",
        minimum=0,
        unit="steps",
    )
    encoding: str = setting(
        "f32",
        "how vectors travel: f32 (4 bytes a value), f16 or bf16 (2, saturating), int8 "
        "(1 + a float32 scale per 256 values); every node of a run must use the same",
        choices=ENCODINGS,
    )
    error_feedback: bool = setting(
        True,
        "carry each lossy encoding's rounding error of a node's proposal (round 0) into "
        "its next proposal of the phase (off: for experiments)",
    )
    crypto: bool = setting(
        True,
        "Ed25519 signatures on every SEND; only a simulation may switch them off (the "
        "summary says so)",
        nodes_require=True,
        nodes_require_why="a real node always signs (crypto = false is for simulations)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.pre_aggregators, list):  # as a TOML table or JSON gives it
            object.__setattr__(self, "pre_aggregators", tuple(self.pre_aggregators))
        problems = field_problems(self)
        if not problems:  # cross-field rules, once every field is sound
            if isinstance(self.gradient_rounds, int) and self.gradient_rounds > self.rounds_max:
                problems.append(f"gradient_rounds: must be <= rounds_max ({self.rounds_max})")
            if self.model_rounds > self.rounds_max:
                problems.append(f"model_rounds: must be <= rounds_max ({self.rounds_max})")
        if problems:
            raise SettingsError(problems)

    def round_schedule(self) -> RoundSchedule:
        if self.gradient_rounds == GRADIENT_ROUNDS_LOG2:
            return RoundSchedule(GradientSchedule.LOG2, 1, self.model_rounds, self.rounds_max)
        return RoundSchedule(
            GradientSchedule.CONSTANT,
            int(self.gradient_rounds),
            self.model_rounds,
            self.rounds_max,
        )

    def tolerance_problem(self, n: int, f: int) -> str | None:
        """Why n nodes cannot tolerate f Byzantine ones with this aggregator (after its
        pre-aggregators), or None; the message names the rule that needs more."""
        try:
            return tolerance_problem(n, f, self.aggregator, self.pre_aggregators)
        except ValueError as error:
            return str(error)

    def config(
        self,
        *,
        n: int,
        f: int,
        me: int,
        session: bytes,
        dim: int,
        steps_total: int | None = None,
    ) -> ProtocolConfig:
        """The core's configuration for node ``me`` of a run with these settings."""
        return ProtocolConfig(
            n=n,
            f=f,
            me=me,
            session=session,
            dim=dim,
            aggregator=self.aggregator,
            pre_aggregators=self.pre_aggregators,
            schedule=self.round_schedule(),
            steps_ahead_max=self.steps_ahead_max,
            steps_retained=self.steps_retained,
            steps_total=steps_total,
            encoding=self.encoding,
            error_feedback=self.error_feedback,
        )
