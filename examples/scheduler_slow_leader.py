"""A custom scheduler: each step a different node is the straggler.

Run it with ``jungle sim examples/custom_scheduler.toml`` (from the repository root).
"""

from sim.delays import LogNormal
from sim.schedulers import MessageMeta, Scheduler


class SlowLeader(Scheduler):
    """Messages node ``step % n`` sends for step ``step`` take ``factor`` times longer:
    a straggler that moves every step, which a fixed list of slow nodes cannot express."""

    def __init__(self, n: int, factor: float = 20.0, median_s: float = 0.01) -> None:
        self.n = n
        self.factor = factor
        self.link = LogNormal(median_s=median_s, sigma=0.5)

    def delay_s(self, meta: MessageMeta, u: float) -> float:
        delay_s = self.link.sample(u)
        # the engine tags each message with (origin, step, phase, round, kind)
        if meta.tag and meta.src == meta.tag[1] % self.n:
            delay_s *= self.factor
        return delay_s
