"""Shared test helpers: models, brute-force references, sample reports, checkpoint classes."""
