"""The Lightning callback with a real Trainer: what it logs, how often, and that training runs
exactly as it would without it."""

from __future__ import annotations

import csv
import importlib
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.example_input_array = torch.zeros(2, 20, 3)

    def forward(self, x):
        out, _ = self.encoder(x)
        return self.head(out[:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train(tmp_path, callbacks):
    torch.manual_seed(0)
    model = Tiny()
    data = TensorDataset(torch.randn(32, 20, 3), torch.randn(32, 1))
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True))  # shuffling draws RNG
    return model, trainer


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and logging
@pytest.mark.filterwarnings("ignore:.*treespec")  # Lightning's own use of torch internals
def test_the_callback_logs_every_epoch_and_leaves_training_as_it_was(tmp_path):
    callback = GradscopeCallback(every_n_epochs=1, steps=20, path=tmp_path / "series.jsonl")
    watched, trainer = train(tmp_path / "watched", [callback])
    plain, _ = train(tmp_path / "plain", [])
    for a, b in zip(watched.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)  # same weights: the model, its grads and the RNG untouched
    assert [step for step, _ in callback.monitor.series] == [4, 8]  # 4 batches per epoch
    report = callback.monitor.series[-1][1]
    label = report.recurrent[0].label
    with open(trainer.logger.log_dir + "/metrics.csv", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(f"gradscope/{label}/lambda_1")]
    assert len(rows) == 2
    last = rows[-1]
    assert float(last[f"gradscope/{label}/lambda_1"]) == pytest.approx(
        report.recurrent[0].top_exponent
    )
    assert float(last[f"gradscope/{label}/horizon"]) == pytest.approx(
        report.recurrent[0].memory_horizon
    )
    assert float(last["gradscope/status"]) in (0.0, 1.0)
    assert len((tmp_path / "series.jsonl").read_text().splitlines()) == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore:.*treespec")
def test_the_callback_can_watch_every_n_steps_a_submodule(tmp_path):
    callback = GradscopeCallback(every_n_steps=3, module="encoder", input_shape=(1, 20, 3))
    train(tmp_path, [callback])
    assert [step for step, _ in callback.monitor.series] == [3, 6]
    assert all(report.recurrent[0].name == "" for _, report in callback.monitor.series)


def test_without_lightning_the_import_says_what_to_install(monkeypatch):
    for name in ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "gradscope.integrations.lightning")
    with pytest.raises(ImportError, match=r'pip install "gradscope\[lightning\]"'):
        importlib.import_module("gradscope.integrations.lightning")
