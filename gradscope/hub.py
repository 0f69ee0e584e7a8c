"""How the Hugging Face Hub names a model (``org/model``), told apart from a path; no torch."""

from __future__ import annotations

import re

#: ``owner/name`` (with ``@revision``): how the Hugging Face Hub names a model.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
#: File suffixes that say a path names a checkpoint file, not a Hub model.
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pt2", ".safetensors", ".json")


def is_hub_id(source: str) -> bool:
    """Whether ``source``, a path that is not there, reads as a Hub model id (``org/model``)."""
    return bool(HUB_ID.match(source)) and not source.lower().endswith(FILE_SUFFIXES)
