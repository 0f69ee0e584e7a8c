"""Integrations with training frameworks, each imported only when used (an optional extra)."""
