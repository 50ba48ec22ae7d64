"""bt's version, and the engine's: a leaf module that every layer may import."""

__version__ = "0.1.0"

ENGINE_VERSION = "6"  # 2: trades stored compactly (results.STORED_TRADE_DTYPE); 3: 12 more metrics, MAE/MFE stored; 4: MAE/MFE computed when shown, not stored; 5: the tail ratio; 6: sma_nb summed from the end (the same bits for every warm-up)
"""Bumped whenever the engine's results could change for the same inputs; part of every task key."""
