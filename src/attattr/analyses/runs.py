"""Resumable dataset runs: one JSON line per finished example, appended as soon as it is done.

The first line is a header with the run's settings; resuming with different settings is refused
(the numbers would silently mix). A line cut short by a kill is ignored on reading, so an
interrupted run resumes from the last complete example and ends with the same results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.errors import ResultFileError

FORMAT = "attattr-run/1"


class RunStore:
    def __init__(self, path: str | os.PathLike, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalise (tuples -> lists, ...)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_fresh()

    def _write_fresh(self) -> None:
        header = json.dumps({"format": FORMAT, "settings": self.settings})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(header + "\n")
        os.replace(tmp, self.path)

    def _read(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            raise ResultFileError(f"{self.path}: not an attattr run file (bad header)") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ResultFileError(f"{self.path}: not an attattr run file")
        if header.get("settings") != self.settings:
            diff = sorted(
                k
                for k in set(header.get("settings", {})) | set(self.settings)
                if header.get("settings", {}).get(k) != self.settings.get(k)
            )
            raise ResultFileError(
                f"{self.path} was written with other settings ({', '.join(diff)}); "
                "use another output directory or delete the file to start over"
            )
        good_end = len(lines[0]) + 1
        for line in lines[1:]:
            if not line.strip():
                good_end += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # cut short by an interruption: everything after it is dropped
            self.records[str(record["id"])] = record
            good_end += len(line) + 1
        if good_end < len(raw):  # drop the partial tail so that appends start on a clean line
            with open(self.path, "r+b") as f:
                f.truncate(min(good_end, len(raw)))

    def done(self, example_id: str) -> bool:
        return str(example_id) in self.records

    def pending(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if not self.done(i)]

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished example (must carry an 'id'); written and flushed at once."""
        line = json.dumps(record, default=_plain) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[str(record["id"])] = json.loads(line)

    def ordered(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Records in the order of `ids` (the dataset order), whatever order they finished in."""
        return [self.records[str(i)] for i in ids if str(i) in self.records]


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a run file")
