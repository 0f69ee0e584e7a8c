"""Shared test set-up: the ``--update-golden`` option (the ``golden`` fixture is in render/)."""

from __future__ import annotations

#: pytester runs the plugin's own tests (tests/test_pytest_plugin.py) in a fresh pytest.
pytest_plugins = ["pytester"]


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files of tests/render/golden from the current output",
    )
