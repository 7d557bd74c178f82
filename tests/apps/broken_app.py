"""An app module that cannot be imported: the master's crash-loop guard must stop."""

from __future__ import annotations

import m2gate_no_such_module  # noqa: F401

application = None
