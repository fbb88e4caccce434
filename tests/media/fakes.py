"""An in-process `JobContext` for driving the import job without a queue."""

from __future__ import annotations

from ondoki.errors import JobCancelled


class FakeContext:
    """Records every report; `cancel_after` makes the N-th checkpoint (and every later one)
    raise `JobCancelled`, as a real context does once its job was cancelled. With
    `cancel_in`, checkpoints are counted from when that stage is first reported."""

    def __init__(self, *, cancel_after: int | None = None, cancel_in: str | None = None) -> None:
        self.job_id = "job-1"
        self.owner: str | None = "user-1"
        self.attempt = 1
        self.reports: list[tuple[str, float]] = []
        self.checkpoints = 0
        self.cancel_after = cancel_after
        self.cancel_in = cancel_in
        self._counted = 0

    def report(self, stage: str, progress: float) -> None:
        assert 0.0 <= progress <= 1.0, progress
        self.reports.append((stage, progress))

    def checkpoint(self) -> None:
        self.checkpoints += 1
        if self.cancel_in is None or self.cancel_in in self.stages:
            self._counted += 1
        if self.cancel_after is not None and self._counted >= self.cancel_after:
            raise JobCancelled()

    @property
    def stages(self) -> list[str]:
        """Stages in the order they were first reported."""
        seen: list[str] = []
        for stage, _ in self.reports:
            if stage not in seen:
                seen.append(stage)
        return seen


def nothing(_: float = 0.0) -> None:
    """A progress callback or checkpoint that does nothing."""
    return None
