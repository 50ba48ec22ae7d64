"""Signal kernels: cross events and event → target-position state machines.

Crosses are strict, as in backtesting.py's ``crossover``: ``a`` crosses over ``b`` at bar t when
``a[t-1] < b[t-1] and a[t] > b[t]``. Touching (equal values) is not a cross, and a comparison with
NaN is false, so there is no cross while either series is still warming up.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def crossover_nb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True at t when ``a[t-1] < b[t-1] and a[t] > b[t]``; False at t = 0.

    Reference: ``reference.crossover`` (backtesting.py's ``crossover`` applied at every bar).
    """
    out = np.zeros(a.shape[0], dtype=np.bool_)
    for t in range(1, a.shape[0]):
        out[t] = a[t - 1] < b[t - 1] and a[t] > b[t]
    return out


@njit(cache=True)
def crossunder_nb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True at t when ``a[t-1] > b[t-1] and a[t] < b[t]``; False at t = 0.

    Reference: ``reference.crossunder``.
    """
    out = np.zeros(a.shape[0], dtype=np.bool_)
    for t in range(1, a.shape[0]):
        out[t] = a[t - 1] > b[t - 1] and a[t] < b[t]
    return out


@njit(cache=True)
def cross_target_nb(a: np.ndarray, b: np.ndarray, short: bool) -> np.ndarray:
    """Target position from the crosses of ``a`` and ``b``: +1 from a cross over until the next
    cross under, then 0 (``short=False``) or −1 (``short=True``) until the next cross over. Flat
    before the first cross. Two passes: the crosses are marked without state carried from bar to
    bar (so the compiler vectorises it), then the position is filled in between them (the
    SMA-cross hot path).

    Reference: ``reference.cross_target`` (``events_target`` of crossover/crossunder).
    """
    size = a.shape[0]
    out = np.empty(size)
    if size == 0:
        return out
    down = -1.0 if short else 0.0
    cross = np.empty(size, np.uint8)  # 1: a crosses over b at this bar, 2: under, 0: neither
    cross[0] = 0
    for t in range(1, size):
        over = (a[t - 1] < b[t - 1]) & (a[t] > b[t])  # & not `and`: no branches
        under = (a[t - 1] > b[t - 1]) & (a[t] < b[t])
        cross[t] = (over * np.uint8(1)) | (under * np.uint8(2))
    state = 0.0
    since = 0
    for t in range(size):
        c = cross[t]
        if c != 0:
            out[since:t] = state
            state = 1.0 if c == 1 else down
            since = t
    out[since:] = state
    return out


@njit(cache=True)
def events_target_nb(
    long_entry: np.ndarray, long_exit: np.ndarray, short_entry: np.ndarray, short_exit: np.ndarray
) -> np.ndarray:
    """Target position (+1, 0, −1) from boolean event arrays. At each bar, exits apply first: a long
    is closed by ``long_exit`` or ``short_entry``, a short by ``short_exit`` or ``long_entry``; then,
    if flat, ``long_entry`` enters long, else ``short_entry`` enters short. So an opposite entry
    reverses the position, and an exit with a same-side entry on one bar keeps it.

    Reference: ``reference.events_target``.
    """
    size = long_entry.shape[0]
    out = np.empty(size)
    state = 0.0
    for t in range(size):
        if state > 0.0 and (long_exit[t] or short_entry[t]):
            state = 0.0
        elif state < 0.0 and (short_exit[t] or long_entry[t]):
            state = 0.0
        if state == 0.0:
            if long_entry[t]:
                state = 1.0
            elif short_entry[t]:
                state = -1.0
        out[t] = state
    return out
