"""torch.save files from elsewhere: saved on a GPU, and a zip archive with no checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradscope.loading import load_model

from tests.helpers.formats import one_line_error, seeded


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch, legacy):
    module = seeded(lambda: nn.GRU(3, 4))
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as patch:  # record every storage as if it lived on cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model": module.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does on a CPU-only machine

    loaded = load_model(path)

    assert torch.equal(loaded.parts[0].module.weight_hh_l0, module.weight_hh_l0)


def test_a_zip_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    import zipfile

    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    message = one_line_error(["analyze", str(path)], capsys)

    assert "zip archive with no PyTorch checkpoint" in message
