"""What the `tpipe send` tests share: the parsed arguments of a send and an input file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def ndjson_file(path: Path, count: int) -> Path:
    """`count` events e-0, e-1, ... one per line."""
    path.write_text("".join(f'{{"event_id": "e-{n}"}}\n' for n in range(count)))
    return path


def send_args(url: str, file: Path, **options: Any) -> argparse.Namespace:
    """`tpipe send <file> --gateway <url> --key wk --retries 0` with `options` changed."""
    values: dict[str, Any] = {
        "gateway": url,
        "key": "wk",
        "file": str(file),
        "batch_size": 100,
        "retries": 0,
        "progress": False,
        "allow_remote": False,
        **options,
    }
    return argparse.Namespace(**values)
