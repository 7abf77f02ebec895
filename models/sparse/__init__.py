"""The learned-ISTA family of Table VII (LISTA, LIHT, LAMP, TiLISTA): 16 unrolled iterations
of dense matrix layers on the flattened middle frame, starting from x₀ = Qinit·y, with no
convolution anywhere (docs/reference.md §5.6). :mod:`models.sparse.base` holds their shared
frame; one module per method.

Modules here may import :mod:`models.base`, :mod:`models.layers` and :mod:`sim`; never
:mod:`stages` or :mod:`pipeline`.
"""
