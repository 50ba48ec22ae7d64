"""bt's version, and the engine's: a leaf module that every layer may import."""

__version__ = "0.1.0"

ENGINE_VERSION = "3"  # 2: trades stored compactly (results.STORED_TRADE_DTYPE); 3: 13 more metrics, trade MAE/MFE
"""Bumped whenever the engine's results could change for the same inputs; part of every task key."""
