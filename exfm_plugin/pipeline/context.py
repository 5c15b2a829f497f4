"""What every step's build needs besides its inputs: the grid, the artifact store, the device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .artifacts import ArtifactStore
from .grid import Grid


@dataclass
class Context:
    """The grid, where artifacts live, the device and DAS engine a build uses, and a per-process
    memo (the oracle row of a test day is computed once, not once per record)."""

    grid: Grid
    store: ArtifactStore
    device: str = "cpu"
    engine: str = "inproc"
    progress: bool = True
    _memo: dict = field(default_factory=dict)

    @property
    def gpu(self) -> int:
        return int(self.device.split(":")[1]) if self.device.startswith("cuda") else -1

    def memo(self, key: tuple, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once per key in this process; a failure is remembered and re-raised."""
        if key not in self._memo:
            try:
                self._memo[key] = ("ok", fn())
            except Exception as exc:  # noqa: BLE001 - stored and re-raised for every caller
                self._memo[key] = ("error", exc)
        status, value = self._memo[key]
        if status == "error":
            raise value
        return value
