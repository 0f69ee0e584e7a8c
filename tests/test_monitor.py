"""The training-time Monitor: a series of analyses from a plain PyTorch loop that leaves the
model, its gradients, its training mode and the random state as they were."""

from __future__ import annotations

import json

import torch
from torch import nn

import gradscope
from gradscope.cli import main


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])


def snapshot(model: nn.Module) -> tuple:
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        model.training,
        torch.get_rng_state().clone(),
    )


def same(before: tuple, after: tuple) -> bool:
    params, grads, training, rng = before
    params2, grads2, training2, rng2 = after
    return (
        all(torch.equal(a, b) for a, b in zip(params, params2, strict=True))
        and all(
            (a is None and b is None) or torch.equal(a, b)
            for a, b in zip(grads, grads2, strict=True)
        )
        and training == training2
        and torch.equal(rng, rng2)
    )


def test_the_monitor_keeps_a_series_and_leaves_the_training_alone(tmp_path, capsys):
    torch.manual_seed(0)
    model = Tagger().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    path = tmp_path / "horizon.jsonl"
    monitor = gradscope.Monitor(model, every=3, path=path, steps=12, batch=2)
    for step in range(7):
        x, y = torch.randn(8, 12, 4), torch.randn(8, 12, 1)
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        before = snapshot(model)
        report = monitor.step(step)
        assert same(before, snapshot(model))  # parameters, grads, training flag, RNG state
        assert (report is not None) == (step % 3 == 0)
        optimizer.step()
    assert [step for step, _ in monitor.series] == [0, 3, 6]
    (series,) = monitor.horizons().values()
    assert [step for step, _ in series] == [0, 3, 6]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 3, 6]
    assert main(["compare", str(path), "-f", "json"]) in (0, 1)
    data = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in data["inputs"]] == [f"{path}@{s}" for s in (0, 3, 6)]
    horizons = [h for _, h in series]
    assert data["series"][0]["memory_horizon"] == horizons


def test_the_monitor_refuses_a_period_below_one():
    import pytest

    with pytest.raises(gradscope.GradscopeError, match="every 1 step or more"):
        gradscope.Monitor(Tagger(), every=0)
