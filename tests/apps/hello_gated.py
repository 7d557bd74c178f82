"""examples/hello.py as the demo serves it, with /stream held after its first line.

After line 1 the app waits until the file named by ``M2GATE_TEST_GATE``
exists (the test creates it once it has *seen* line 1), then writes the
other lines at once. So a client that saw line 1 saw it before the app wrote
line 2, whatever the clocks say. A gate never opened fails the stream
instead of letting a buffered response pass late.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello.py"
_spec = importlib.util.spec_from_file_location("hello_example", _EXAMPLE)
assert _spec is not None and _spec.loader is not None
hello = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hello)

GATE_TIMEOUT = 60.0


def _gate(line: int) -> None:
    if line != 1:
        return
    gate = Path(os.environ["M2GATE_TEST_GATE"])
    deadline = time.monotonic() + GATE_TIMEOUT
    while not gate.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the test never opened the gate after line 1")
        time.sleep(0.01)


hello._pause = _gate
application = hello.application
