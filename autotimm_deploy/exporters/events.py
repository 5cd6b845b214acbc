"""Structured progress: every line an export reports is an :class:`Event`, a ``str`` (so ``print`` and
``lines.append`` keep working) that also says which step it belongs to, and where that step stands.

>>> lines = []
>>> report = Reporter(lines.append, ["load", "onnx"])
>>> report.start("load", "loading m.pt"); report.say("      read 3 tensors")
>>> [(e.kind, e.step, e.index, e.total, str(e)) for e in lines]
[('step', 'load', 1, 2, '[1/2] loading m.pt'), ('detail', 'load', 1, 2, '      read 3 tensors')]
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

__all__ = ["Event", "Reporter"]


class Event(str):
    """One progress line: ``kind`` ``step`` (a step starts: ``[i/n] text``) or ``detail`` (a line within the step),
    the step's ``name``, its ``index`` (1-based) among ``total`` steps."""

    kind: str
    step: str
    index: int
    total: int

    def __new__(cls, text: str, kind: str = "detail", step: str = "", index: int = 0, total: int = 0) -> "Event":
        self = super().__new__(cls, text)
        self.kind, self.step, self.index, self.total = kind, step, index, total
        return self


class Reporter:
    """Numbered steps, the total known up front, each step timed (``seconds``)."""

    def __init__(self, callback: Optional[Callable[[str], None]], steps: List[str]) -> None:
        self.callback = callback or (lambda e: None)
        self.steps = list(steps)
        self.current = ""
        self.seconds: Dict[str, float] = {}
        self._t = 0.0

    def start(self, name: str, text: str) -> None:
        self.finish()
        self.current, self._t = name, time.time()
        index = self.steps.index(name) + 1
        self.callback(Event(f"[{index}/{len(self.steps)}] {text}", "step", name, index, len(self.steps)))

    def say(self, text: str) -> None:
        index = self.steps.index(self.current) + 1 if self.current in self.steps else 0
        self.callback(Event(text, "detail", self.current, index, len(self.steps)))

    def finish(self) -> None:
        """The current step's time, into ``seconds`` (called by the next :meth:`start`, and at the end)."""
        if self.current and self.current not in self.seconds:
            self.seconds[self.current] = time.time() - self._t
