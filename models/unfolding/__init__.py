"""CNN deep-unfolding methods of Table VII (docs/reference.md §5.7): ISTA-Net, ISTA-Net+,
ISTA-Net++, FISTA-Net, USRNet and RPCANet. Each alternates a data step driven by the sampling
model (Φ, or a blur-and-decimate kernel for USRNet) with a learned convolutional prior on the
33×33 map, from the middle frame of a window. :mod:`models.unfolding.blocks` holds the ISTA-Net+
block shared by ISTA-Net+ and FISTA-Net; one module per method.

Modules here may import :mod:`models.base`, :mod:`models.layers` and :mod:`sim`; never
:mod:`stages` or :mod:`pipeline`.
"""
