"""The strategy the report tests run."""

from __future__ import annotations

# the SMA crossover on numpy, with a float parameter (stored as 1.0) and one task that fails
REPORTED = """
class Crossing(Strategy):
    fast = 5
    slow = 20
    scale = 1.0
    warmup = 60

    def signals(self, bars):
        if self.fast == 15 and self.slow == 50 and bars.symbol == "BBB":
            raise ValueError("no data for this one")
        c = bars.close
        f = np.convolve(c, np.ones(self.fast) / self.fast)[: len(c)]
        s = np.convolve(c, np.ones(self.slow) / self.slow)[: len(c)]
        return np.where(f > s, self.scale, -self.scale * 0.5)
"""
