"""The common ending of the evaluation commands: run, print each split's table, write the JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def evaluate_and_report(program: str, evaluate: Callable[[], list[dict[str, Any]]],
                        print_report: Callable[[dict[str, Any]], None], json_path: Path | None) -> int:
    """Run ``evaluate`` (one result per split), print each result, and write them with the wall time to
    ``json_path`` (atomically). A :class:`~cascade.errors.UserError` is one line on stderr and exit code 2."""
    from cascade.errors import UserError
    from cascade.fileio import atomic_write_text

    started = time.perf_counter()
    try:
        results = evaluate()
    except UserError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    for result in results:
        print_report(result)
    if json_path:
        payload = {"results": results, "seconds": time.perf_counter() - started}
        atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0
