"""Where a subscription stands in its channel: the rules every PubSub adapter shares."""

from __future__ import annotations

from collections.abc import Sequence

from ondoki.models import Delivery, Gap, Message, Position


class Cursor:
    """The last position a subscription handed out, and what to deliver next.

    Adapters feed it live messages (`accept`) and history snapshots (`catch_up`); it decides
    what is delivered, what is a duplicate, and when the subscriber must be told of a gap.
    """

    def __init__(self, channel: str, epoch: str, offset: int) -> None:
        self.channel = channel
        self.epoch = epoch
        self.offset = offset

    def accept(self, position: Position) -> bool | None:
        """True to deliver a live message, False for one already delivered, None when a
        message before it is missing (history must fill the hole)."""
        if position.epoch == self.epoch:
            if position.offset <= self.offset:
                return False
            if position.offset == self.offset + 1:
                self.offset = position.offset
                return True
            return None
        if position.offset == 1:
            # The first message of a new epoch, right after everything delivered from the
            # old one on the same ordered stream: nothing can be missing in between.
            self.epoch, self.offset = position.epoch, 1
            return True
        return None

    def catch_up(
        self, epoch: str, latest: int, entries: Sequence[tuple[int, bytes]]
    ) -> list[Delivery]:
        """What to deliver to reach `latest`, given the history `entries`: those after the
        cursor's offset in its own epoch, or the new epoch's from offset 1 when it changed."""
        if epoch != self.epoch:
            reason = f"epoch changed from {self.epoch!r} to {epoch!r}: history was lost"
            # Whatever the new epoch still holds from its start is delivered after the gap:
            # a live subscriber loses nothing that was published after the loss.
            start = 0 if entries and entries[0][0] == 1 else latest
            self.epoch, self.offset = epoch, start
            return [Gap(self.channel, Position(epoch, start), reason), *self._deliver(entries)]
        if self.offset > latest:
            reason = f"offset {self.offset} is ahead of the channel's latest offset {latest}"
        elif self.offset == latest:
            return []
        elif entries and entries[0][0] == self.offset + 1:
            return self._deliver(entries)
        else:
            reason = f"history no longer holds offset {self.offset + 1} (trimmed or expired)"
        self.epoch, self.offset = epoch, latest
        return [Gap(self.channel, Position(epoch, latest), reason)]

    def _deliver(self, entries: Sequence[tuple[int, bytes]]) -> list[Delivery]:
        fresh = [(o, p) for o, p in entries if o > self.offset]
        if fresh:
            self.offset = fresh[-1][0]
        return [Message(self.channel, Position(self.epoch, o), p) for o, p in fresh]
