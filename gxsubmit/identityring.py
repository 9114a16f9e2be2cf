"""The signing identities one worker holds: the current one and earlier ones still valid.

After a certificate rotation, a row whose tx id was made under the old certificate keeps it: the
pipeline signs that row with the identity that reproduces its stored tx id.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime

from gxsubmit.fabric import SigningIdentity

__all__ = ["IdentityRing"]


class IdentityRing:
    """The identity new attempts sign with, plus earlier ones still valid (after a rotation), so a
    row whose tx id was made under the old certificate keeps it. Keyed by creator fingerprint."""

    def __init__(self, current: SigningIdentity, not_after: datetime) -> None:
        self._current = current
        self._all: OrderedDict[str, tuple[SigningIdentity, datetime]] = OrderedDict()
        self._all[current.creator_fingerprint] = (current, not_after)

    @property
    def current(self) -> SigningIdentity:
        return self._current

    def rotate(self, new: SigningIdentity, not_after: datetime) -> None:
        self._current = new
        self._all[new.creator_fingerprint] = (new, not_after)
        self._all.move_to_end(new.creator_fingerprint)
        while len(self._all) > 4:
            self._all.popitem(last=False)

    def add_former(self, signer: SigningIdentity, not_after: datetime) -> None:
        """An earlier creator of a key held here (see ``SigningIdentity.as_creator``); never current."""
        if signer.creator_fingerprint not in self._all:
            self._all[signer.creator_fingerprint] = (signer, not_after)
            self._all.move_to_end(signer.creator_fingerprint, last=False)

    def signers(self, now: datetime | None = None) -> list[SigningIdentity]:
        """The identities that can still sign, the current one first."""
        now = now or datetime.now(UTC)
        out = [self._current]
        out.extend(s for s, na in reversed(self._all.values()) if s is not self._current and na > now)
        return out

    def get(self, fingerprint: str, now: datetime | None = None) -> SigningIdentity | None:
        entry = self._all.get(fingerprint)
        if entry is None:
            return None
        if entry[1] <= (now or datetime.now(UTC)):
            return None  # expired: the peer would refuse its signature
        return entry[0]

    def holds(self, fingerprint: str) -> bool:
        return self.get(fingerprint) is not None

    def not_after(self, fingerprint: str | None) -> datetime | None:
        """Expiry of a certificate this process has held (None: never seen here)."""
        entry = self._all.get(fingerprint) if fingerprint is not None else None
        return entry[1] if entry is not None else None
