"""Hugging Face folders made from others, for the loading tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def as_classifier(base: Path, folder: Path) -> Path:
    """``base`` (a GPT-2 language model's folder) copied to ``folder`` with a config naming
    GPT2ForSequenceClassification: its weights lack the classifier head ``score``."""
    shutil.copytree(base, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"architectures": ["GPT2ForSequenceClassification"], "num_labels": 3}
    config["pad_token_id"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    return folder
