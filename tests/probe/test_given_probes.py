"""A probe the user gives says the input's shape: it is never refused for a shape gradscope
could not have inferred itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import gradscope


class ProjectedGRU(nn.Module):
    """A Linear input projection before an nn.GRUCell the forward loops itself."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 6)
        self.cell = nn.GRUCell(6, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 6)
        for x_t in self.inp(x).unbind(1):
            h = self.cell(x_t, h)
        return self.out(h)


class Embedding(nn.Module):
    """A library's own embedding: a table looked up by integer ids, not PyTorch's class."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, width))

    def forward(self, ids: Tensor) -> Tensor:
        return self.table[ids]


class OwnEmbeddingTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = Embedding(20, 8)
        self.layers = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 3))

    def forward(self, ids: Tensor) -> Tensor:
        return self.layers(self.embed(ids))


def test_a_sequence_probe_for_a_model_starting_with_a_linear_is_accepted():
    probe = torch.randn(2, 12, 8, dtype=torch.float64)
    per_step = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 1))

    report = gradscope.analyze(per_step, probe)

    assert report.settings.input_shape == [2, 12, 8]
    assert report.stack.blocks == 3
    cells = gradscope.analyze(ProjectedGRU(), probe)
    assert [(c.name, c.steps) for c in cells.recurrent] == [("cell", 12)]


def test_token_ids_for_a_library_embedding_are_taken_as_given(tmp_path):
    ids = torch.randint(0, 20, (3, 9))
    path = tmp_path / "ids.pt"
    torch.save(ids, path)

    report = gradscope.analyze(OwnEmbeddingTagger(), probe=str(path))

    assert report.settings.input_shape == [3, 9]
    assert report.stack is not None and report.stack.blocks == 3
