"""Local steps (DiLoCo): H inner optimiser steps, a pseudo-gradient, an outer optimiser.

What is pinned here: H = 1 with outer lr 1 and no outer momentum is the loop jungle ran
before local steps existed (a scenario's trace digest recorded on that code); the
pseudo-gradient is the local trajectory's displacement over the learning rate; the inner
AdamW and the outer Nesterov SGD are torch's own optimisers' arithmetic; and all of their
state survives a checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from node.config import ConfigError, load_config
from node.tasks import Task, load_task
from node.trainer import Trainer, resolve_device
from node.training import TrainingSettings
from sim.engine import run_scenario
from sim.scenario import Scenario, ScenarioError

#: `default.toml` with steps = 4, eval_every = 2, run on b9b7806 (before local steps and
#: encodings existed): the loop of that code, whose defaults are H = 1, outer lr 1, mu = 0
DIGEST_BEFORE_LOCAL_STEPS = "142084fd1144278c93d05cceb55c1f83442fd48bd667dd2475b3c54940038f7a"


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits-mlp", seed=0)


def _trainer(task: Task, **settings: object) -> Trainer:
    base: dict[str, object] = {"batch_size": 16, "device": "cpu"}
    base.update(settings)
    return Trainer(task, np.arange(400), TrainingSettings(**base), node_seed=3)  # type: ignore[arg-type]


def test_h1_outer_lr_1_no_momentum_is_the_old_loop_digest() -> None:
    scenario = Scenario.from_toml("sim/scenarios/default.toml").with_values(
        {
            "steps": 4,
            "eval_every": 2,
            "training.inner_steps": 1,
            "training.outer_lr": 1.0,
            "training.outer_momentum": 0.0,
            "training.inner_optimizer": "sgd",
        }
    )
    with tempfile.TemporaryDirectory() as out:
        summary = run_scenario(scenario, Path(out), progress=False)
    assert summary.trace_digest == DIGEST_BEFORE_LOCAL_STEPS


def test_pseudo_gradient_is_the_local_displacement_over_lr_and_the_model_is_put_back(
    digits: Task,
) -> None:
    h, lr = 5, 0.2
    trainer = _trainer(digits, inner_steps=h, lr=lr, momentum=0.5)
    twin = _trainer(digits, inner_steps=1, lr=lr, momentum=0.5)  # same data, same sampler
    start = trainer.parameters()
    v = trainer.gradient()
    assert np.array_equal(trainer.parameters(), start)  # theta_0 is back
    for _ in range(h):  # the local trajectory, step by step, with H = 1's own loop
        twin.apply_gradient(twin.gradient())
    displacement = (start - twin.parameters()) / lr
    np.testing.assert_allclose(v, displacement, rtol=1e-4, atol=1e-5)
    assert trainer.batches == h and trainer.statistics().steps == 0
    trainer.apply_gradient(v)  # outer lr 1, no momentum: the local model, up to rounding
    np.testing.assert_allclose(trainer.parameters(), twin.parameters(), atol=1e-5)


def test_inner_adamw_follows_torch_adamw(digits: Task) -> None:
    h, lr, decay = 6, 0.01, 0.05
    trainer = _trainer(digits, inner_steps=h, lr=lr, inner_optimizer="adamw", weight_decay=decay)
    # the same batches, drawn by an H = 1 twin whose gradients we recompute in torch
    sampler = _trainer(digits, inner_steps=1, momentum=0.0)
    model = digits.model_factory()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    start = trainer.parameters()
    v = trainer.gradient()
    x, y = digits.train.X[:400], digits.train.y[:400]
    for _ in range(h):
        sampler.gradient()
        (batch,) = sampler._last_batches
        optimiser.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
    theta_h = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(start - lr * v, theta_h, atol=2e-6)


def test_outer_nesterov_follows_torch_sgd(digits: Task) -> None:
    lr, outer_lr, mu = 0.3, 0.7, 0.9
    trainer = _trainer(digits, lr=lr, outer_lr=outer_lr, outer_momentum=mu)
    reference = torch.nn.Parameter(torch.from_numpy(trainer.parameters()))
    optimiser = torch.optim.SGD([reference], lr=outer_lr * lr, momentum=mu, nesterov=True)
    rng = np.random.default_rng(7)
    for _ in range(5):
        v = rng.normal(size=trainer.dim).astype(np.float32)
        trainer.apply_gradient(v)
        reference.grad = torch.from_numpy(v)
        optimiser.step()
    np.testing.assert_allclose(trainer.parameters(), reference.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_checkpoint_keeps_inner_and_outer_state(digits: Task, optimizer: str) -> None:
    settings = {"inner_steps": 3, "inner_optimizer": optimizer, "outer_momentum": 0.8}
    a = _trainer(digits, lr=0.05, **settings)
    for _ in range(2):
        a.apply_gradient(a.gradient())
    b = _trainer(digits, lr=0.05, **settings)
    b.load_state_dict(a.state_dict())
    for _ in range(2):
        va, vb = a.gradient(), b.gradient()
        assert np.array_equal(va, vb)
        a.apply_gradient(va)
        b.apply_gradient(vb)
    assert np.array_equal(a.parameters(), b.parameters())
    other = _trainer(digits, lr=0.05, inner_steps=3, inner_optimizer=optimizer)
    with pytest.raises(ValueError, match="optimiser or sampler state"):
        other.load_state_dict(a.state_dict())  # outer momentum state it has no room for


def test_format_1_checkpoint_loads_with_zero_new_state(digits: Task) -> None:
    a = _trainer(digits)
    a.apply_gradient(a.gradient())
    old = a.state_dict()
    for key in ("second_moment", "adam_steps", "outer_buffer"):
        del old[key]
    old["format"] = 1
    b = _trainer(digits)
    b.load_state_dict(old)
    assert np.array_equal(a.gradient(), b.gradient())


def test_simulation_counts_outer_steps_and_records_batches() -> None:
    scenario = Scenario.from_toml("sim/scenarios/default.toml").with_values(
        {
            "n": 4,
            "f": 1,
            "steps": 3,
            "eval_every": 3,
            "byzantine.nodes": [3],
            "byzantine.per_node": {},
            "byzantine.strategy": "sign_flip",
            "network.slow_nodes": {},
            "training.inner_steps": 4,
            "training.batches_per_gradient": 2,
        }
    )
    with tempfile.TemporaryDirectory() as out:
        summary = run_scenario(scenario, Path(out), progress=False)
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    assert summary.completed and summary.steps == 3
    steps = [r for r in map(json.loads, lines) if r.get("type") == "step" and r["honest"]]
    # 3 outer steps, each of 4 inner steps of 2 batches: 8, 16, 24 batches
    assert sorted({(r["step"], r["batches"]) for r in steps}) == [(0, 8), (1, 16), (2, 24)]


def test_local_steps_is_renamed_with_a_pointer(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"local_steps: it moved to \[training\] batches_per"):
        Scenario.from_dict(
            {"n": 4, "f": 1, "steps": 2, "training": {"local_steps": 2}}  # type: ignore[dict-item]
        )
    config = tmp_path / "node.toml"
    config.write_text("[training]\nlocal_steps = 2\n")
    with pytest.raises(ConfigError, match=r"local_steps: it moved to \[training\] batches_per"):
        load_config(config)


def test_training_settings_refuse_bad_local_step_values() -> None:
    for bad in (
        {"inner_steps": 0},
        {"inner_optimizer": "adam"},
        {"outer_lr": 0.0},
        {"outer_momentum": 1.0},
        {"device": "tpu"},
    ):
        with pytest.raises(ValueError):
            TrainingSettings(**bad)  # type: ignore[arg-type]


def test_device_auto_is_cpu_without_a_gpu_and_cuda_says_why() -> None:
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_smoke_local_steps_match_cpu(digits: Task) -> None:
    cpu = _trainer(digits, inner_steps=3, lr=0.1)
    gpu = _trainer(digits, inner_steps=3, lr=0.1, device="cuda")
    assert gpu.device.type == "cuda"
    for _ in range(3):
        vc, vg = cpu.gradient(), gpu.gradient()
        assert vg.dtype == np.float32 and isinstance(vg, np.ndarray)
        np.testing.assert_allclose(vc, vg, rtol=1e-3, atol=1e-4)
        cpu.apply_gradient(vc)
        gpu.apply_gradient(vc)
        gpu.set_parameters(gpu.parameters())
    np.testing.assert_allclose(cpu.parameters(), gpu.parameters(), atol=1e-4)
    assert abs(cpu.evaluate()[1] - gpu.evaluate()[1]) < 0.02


def test_jungle_sim_device_flag_sets_the_scenarios_training_device() -> None:
    from sim.cli import _load, build_parser

    args = build_parser().parse_args(["default", "--device", "cpu", "--steps", "2"])
    scenario = _load(args)
    assert scenario.training.device == "cpu" and scenario.steps == 2
    assert _load(build_parser().parse_args(["default"])).training.device == "auto"
