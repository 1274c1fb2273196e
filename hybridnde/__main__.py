"""``python -m hybridnde``: the ``hybridnde`` command (where the script is not on the PATH)."""
from .cli import main

raise SystemExit(main())
