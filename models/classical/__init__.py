"""Classical, not learned unmixers (ISTA): an optimisation per window, nothing to train.

Modules here may import :mod:`models.base`, :mod:`models.layers` and :mod:`sim`.
"""
