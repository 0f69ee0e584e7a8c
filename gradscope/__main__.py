"""``python -m gradscope``."""

from gradscope.cli import main

raise SystemExit(main())
