"""A model with code of its own, as a Hugging Face folder ships it (``auto_map``)."""

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class TinyConfig(PretrainedConfig):
    model_type = "tiny-remote"  # no model transformers knows

    def __init__(self, vocab_size=40, hidden=16, layers=4, **kw):
        self.vocab_size, self.hidden, self.layers = vocab_size, hidden, layers
        super().__init__(**kw)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.Tanh())
            for _ in range(config.layers)
        )
        self.head = nn.Linear(config.hidden, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, **kw):
        x = self.embed(input_ids)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)
