"""Multi-frame learned unmixers that read the whole 5-frame window: DeRefNet (the paper's
method) and FastUnmixer (our fast CPU model).

Modules here may import :mod:`models.base`, :mod:`models.layers` and :mod:`sim`.
"""
