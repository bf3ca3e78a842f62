"""``genrank templates``: list the shipped recipes with their models, score kind and scale."""

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
        print(f"{row['name']:<24} {row['description']}")
        print(f"    score: {row['score']} ({row['scale']}), relevance: {row['relevance']}, labels: {row['labels']}, "
              f"{'chat template' if row['chat'] else 'pieces (no chat template)'}")
        print(f"    models: {', '.join(row['models']) or '(none listed; default ' + str(row['default_model']) + ')'}")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("templates", help="list the shipped recipes: models, score kind and scale",
                       formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_templates)
