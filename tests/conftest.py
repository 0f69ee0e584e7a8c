"""Shared test set-up: the tests import their helpers (models, reference) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
