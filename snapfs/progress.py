"""The one progress bar: `snapfs restore` and `snapfs verify` show it, scripts and --json do not.

tqdm is imported only when a bar is shown, so a command run from a script does not pay for it.
"""

from __future__ import annotations

import sys


class Progress:
    """A tqdm bar on stderr when it is a terminal; does nothing otherwise (scripts, --json)."""

    def __init__(self, enabled: bool, desc: str = "restore", unit: str = "B") -> None:
        self._bar = None
        self._unit = unit
        self._enabled = enabled
        self._desc = desc
        self._files = 0

    @classmethod
    def disabled(cls) -> Progress:
        return cls(False)

    @classmethod
    def for_terminal(cls, quiet: bool = False, desc: str = "restore", unit: str = "B") -> Progress:
        return cls(not quiet and sys.stderr.isatty(), desc, unit)

    def start(self, total_bytes: int | None) -> None:
        if not self._enabled or self._bar is not None:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=total_bytes,
            unit=self._unit,
            unit_scale=self._unit == "B",
            unit_divisor=1024,
            desc=self._desc,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def update(self, nbytes: int = 0, files: int = 0) -> None:
        if self._bar is None:
            return
        if files:
            self._files += files
            self._bar.set_postfix_str(f"{self._files} files", refresh=False)
        if nbytes:
            self._bar.update(nbytes)

    def note(self, text: str) -> None:
        """Say more than the count beside the bar (verify: bytes, GETs, problems so far)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
