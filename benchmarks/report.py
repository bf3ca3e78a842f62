"""Print a benchmark's result as JSON and write it to the ``--out`` file, if one was given."""

import json
from pathlib import Path


def report(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
