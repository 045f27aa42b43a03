"""``python -m clrfit``: the ``clrfit`` command."""
from .cli import main

raise SystemExit(main())
