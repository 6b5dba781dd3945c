"""A random generator whose whole state is one integer (splitmix64).

The simulator persists its state after every call when it outlives the engine
(`--sim-state`); Mersenne Twister's 2.5 KB state per symbol would make that slow.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["SmallRandom"]

_MASK = (1 << 64) - 1
_FLOAT_SCALE = 1.0 / (1 << 53)


class SmallRandom(random.Random):
    """splitmix64 behind `random.Random`'s API (uniform, randint, choice, normalvariate...)."""

    def __init__(self, seed: str | int = 0) -> None:
        self.state = 0
        super().__init__(seed)

    def seed(self, a: object = None, version: int = 2) -> None:
        digest = hashlib.sha256(str(a).encode("utf-8")).digest()
        self.state = int.from_bytes(digest[:8], "big")

    def _next64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self._next64() >> 11) * _FLOAT_SCALE

    def getrandbits(self, k: int) -> int:
        bits, value = 0, 0
        while bits < k:
            value = (value << 64) | self._next64()
            bits += 64
        return value >> (bits - k)

    def getstate(self) -> int:  # type: ignore[override]  # one int instead of a tuple
        return self.state

    def setstate(self, state: int) -> None:  # type: ignore[override]  # see getstate
        self.state = state
