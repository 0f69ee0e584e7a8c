"""Calibration: how far the verdict at initialisation predicts what training does.

Small recurrent models train on the adding problem (two channels: values drawn from U(0, 1)
and markers; the target is the sum of the two marked values, one in each half of the sequence)
for a fixed budget of optimizer steps. A model has learned when its validation MSE is below
0.04: always answering 1 scores 0.167, and remembering only the nearer marked value scores
0.083, so learning means carrying the first value across about half the sequence or more.

For every model kind, sequence length and seed, gradscope analyses the initial model on a batch
of the task's own inputs, with its fixes measured on a copy (``what_if``), and a Monitor
records the memory horizon during training. The table compares the verdict (healthy or not
over the sequence length) with the outcome, and, where a fix was measured to help, trains the
model with that fix applied and compares its status after with that outcome.

    python benchmarks/trainability.py              # the full table (tens of minutes on 2 cores)
    python benchmarks/trainability.py --quick      # two lengths, one seed
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradscope
from gradscope.options import AnalysisOptions
from gradscope.whatif import fixed_copy

#: Validation MSE below this is learned (see the module docstring).
LEARNED = 0.04
HIDDEN = 32
KINDS = ("rnn", "rnn-orthogonal", "lstm", "lstm-forget-bias-1", "gru")


class Adding(nn.Module):
    """A recurrent module over the sequence, a Linear head on its last output."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind.split("-")[0]]
        self.rnn = cls(2, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)
        with torch.no_grad():
            if kind == "rnn-orthogonal":
                nn.init.orthogonal_(self.rnn.weight_hh_l0)
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.zero_()
            if kind == "lstm-forget-bias-1":
                self.rnn.bias_ih_l0[HIDDEN : 2 * HIDDEN].fill_(1.0)
                self.rnn.bias_hh_l0[HIDDEN : 2 * HIDDEN].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def adding_batch(size: int, length: int, generator: torch.Generator) -> tuple:
    """``size`` sequences of the adding problem of ``length`` steps, and their targets."""
    values = torch.rand(size, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (size,), generator=generator)
    second = torch.randint(half, length, (size,), generator=generator)
    markers = torch.zeros(size, length)
    rows = torch.arange(size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(dim=1)


@dataclass
class Outcome:
    mse: float
    horizons: list[float | None]

    @property
    def learned(self) -> bool:
        return self.mse < LEARNED


def train(model: nn.Module, length: int, seed: int, budget: int, probe: torch.Tensor) -> Outcome:
    """Adam (lr 3e-3, clipped at norm 1) on fresh batches of 64 for ``budget`` steps; the
    validation MSE on 1000 held-out sequences, and the horizon a Monitor saw along the way."""
    generator = torch.Generator().manual_seed(1000 + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    monitor = gradscope.Monitor(
        model, every=max(1, budget // 4), steps=length, example_input=probe, dtype="float32"
    )
    for step in range(budget + 1):
        monitor.step(step)
        if step == budget:
            break
        x, y = adding_batch(64, length, generator)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    x, y = adding_batch(1000, length, torch.Generator().manual_seed(7))
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x), y))
    series = [report.recurrent[0].memory_horizon for _, report in monitor.series]
    return Outcome(mse, series)


def horizon(value: float | None) -> str:
    return "inf" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two lengths, one seed")
    parser.add_argument("--lengths", default="10,30,60,120")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=600, help="optimizer steps per run")
    args = parser.parse_args()
    lengths = [10, 60] if args.quick else [int(n) for n in args.lengths.split(",")]
    seeds = 1 if args.quick else args.seeds
    torch.set_num_threads(1)
    print(
        f"adding problem, hidden {HIDDEN}, {args.budget} steps of Adam, learned = validation "
        f"MSE < {LEARNED}\n"
    )
    header = (
        f"{'model':<20}{'T':>5}{'seed':>5}  {'verdict':<10}{'horizon (monitor)':<30}"
        f"{'MSE':>7}  {'learned':<8}{'agree':<6}| {'best measured fix':<20}{'after':<10}"
        f"{'MSE':>7}  {'learned':<8}{'agree'}"
    )
    print(header)
    print("-" * len(header))
    verdicts, fixes, started = [], [], time.perf_counter()
    for kind in KINDS:
        for length in lengths:
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = Adding(kind)
                probe, _ = adding_batch(8, length, torch.Generator().manual_seed(99 + seed))
                report = gradscope.analyze(model, probe, steps=length, dtype="float32")
                healthy = report.status == "healthy"
                helping = [f for f in report.fixes if f.helps]
                fixed_model = None
                if helping:
                    options = AnalysisOptions(dtype="float32")
                    fixed_model, _ = fixed_copy(
                        model, helping[0].id, report.recurrent, None, options
                    )
                outcome = train(model, length, seed, args.budget, probe)
                agree = healthy == outcome.learned
                verdicts.append((kind, agree))
                line = (
                    f"{kind:<20}{length:>5}{seed:>5}  {report.status:<10}"
                    f"{' -> '.join(horizon(h) for h in outcome.horizons):<30}"
                    f"{outcome.mse:>7.3f}  {'yes' if outcome.learned else 'no':<8}"
                    f"{'yes' if agree else 'no':<6}| "
                )
                if fixed_model is not None:
                    torch.manual_seed(seed)
                    fixed = train(fixed_model, length, seed, args.budget, probe)
                    after = helping[0].status_after or ""
                    fix_agree = (after == "healthy") == fixed.learned
                    fixes.append(fix_agree)
                    line += (
                        f"{helping[0].id:<20}{after:<10}{fixed.mse:>7.3f}  "
                        f"{'yes' if fixed.learned else 'no':<8}{'yes' if fix_agree else 'no'}"
                    )
                print(line, flush=True)
    print()
    agreed = sum(agree for _, agree in verdicts)
    print(f"verdict at initialisation agrees with training: {agreed} of {len(verdicts)} runs")
    for kind in KINDS:
        runs = [agree for k, agree in verdicts if k == kind]
        print(f"  {kind:<20}{sum(runs)} of {len(runs)}")
    if fixes:
        print(
            f"status after the best measured fix agrees with training: {sum(fixes)} of {len(fixes)}"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
