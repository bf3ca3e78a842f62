"""``genrank templates``: list the shipped prompt templates."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..templates import list_templates
from .common import HelpFormatter


def cmd_templates(args: argparse.Namespace) -> int:
    rows = list_templates()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    for row in rows:
        print(f"{row['name']:<26} labels: {row['labels']:<14} {row['description']}")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("templates", help="list the shipped prompt templates", formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_templates)
