"""A JSONL sink for Ray tests whose first write in each worker process waits, as write tasks whose
worker processes start late do.

Importable by Ray workers (tests/ is on their PYTHONPATH). Put in place of ``genrank.ray._JsonlSink``
as ``functools.partial(LateJsonlSink, seconds=..., log=...)``; each write logs ``PID written ROWS``
to ``log`` (the stand-in engine's log format) before it writes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from genrank.ray import _JsonlSink

_started = False


class LateJsonlSink(_JsonlSink):
    def __init__(self, path: str, *, seconds: float, log: str, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.seconds, self.log = seconds, log

    def write_block_to_file(self, block, file) -> None:
        global _started
        if not _started:
            time.sleep(self.seconds)
            _started = True
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} written {block.num_rows()}\n")
        super().write_block_to_file(block, file)
