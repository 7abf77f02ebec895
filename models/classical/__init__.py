"""Classical, not learned unmixers (ISTA, BID): an iteration per window, nothing to train.
:mod:`models.classical.per_sample` holds their shared per-sample stopping loop.

Modules here may import :mod:`models.base`, :mod:`models.layers` and :mod:`sim`.
"""
