"""Resumable build stages: each runs once (done when its marker file exists); its wall time is logged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class StageLog:
    """Runs named stages once (a stage is done when its marker file exists) and logs each one's time."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.path = out / "build_log.jsonl"
        self.log = log

    def run(self, name: str, marker: Path, work: Callable[[], Any]) -> None:
        """Run ``work`` unless ``marker`` exists; append ``{stage, seconds}`` to the build log."""
        if marker.is_file():
            self.log(f"{name}: done already ({marker})")
            return
        started = time.monotonic()
        work()
        self.record(name, time.monotonic() - started, f"-> {marker}")

    def record(self, name: str, seconds: float, detail: str = "") -> None:
        """Log one finished stage and append it to ``build_log.jsonl``."""
        self.log(f"{name}: {seconds / 60:.1f} min {detail}".rstrip())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(
                json.dumps({"stage": name, "seconds": round(seconds, 1), "finished": time.time()}) + "\n"
            )
