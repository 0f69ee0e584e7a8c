"""Tests of gradscope.loading: checkpoint files, one module per kind of file."""
