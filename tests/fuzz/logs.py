"""Reading the gateway's output as it grows: JSON log lines and plain-text tracebacks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def traceback_signature(text: str) -> str:
    """``ExcType at folder/file.py:function``, for a traceback's innermost frame."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    exc = lines[-1].split(":", 1)[0].strip() if lines else "?"
    if not frames:
        return exc
    path, func = frames[-1]
    return f"{exc} at {'/'.join(Path(path).parts[-2:])}:{func}"


class LogTail:
    """The complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return ""
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", "replace")


@dataclass
class LogEvent:
    doc: dict[str, Any]  # the JSON line, or {} for a plain-text traceback
    traceback: str | None

    @property
    def request_id(self) -> str:
        return str(self.doc.get("request_id") or "")


def log_events(text: str) -> list[LogEvent]:
    """The JSON lines of a log, and plain-text traceback blocks as events of their own."""
    events: list[LogEvent] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                exc = doc.get("exception")
                events.append(LogEvent(doc, exc if isinstance(exc, str) else None))
                continue
        if "Traceback (most recent call last)" in line:
            block = [lines[i - 2]] if i >= 2 and not lines[i - 2].startswith("{") else []
            block.append(line)
            while i < len(lines) and (lines[i][:1] in (" ", "\t", "") or lines[i].startswith(
                    ("During handling", "The above exception", "Traceback"))):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])  # the exception's own line
                i += 1
            events.append(LogEvent({}, "\n".join(block)))
    return events
