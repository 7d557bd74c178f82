"""``python -m m2gate`` is the same as the ``m2gate`` command."""

from m2gate.cli import main

raise SystemExit(main())
