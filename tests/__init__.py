"""gradscope's tests: a folder per area of the package, shared helpers in ``tests.helpers``."""
