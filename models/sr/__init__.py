"""The ten super-resolution baselines of the paper's Table VII (docs/reference.md §5.3–§5.5),
one module per method: the single-frame SR CNNs (SRCNN, ESPCN, EDSR, RDN, DBPN, GMFN), the
GANs (SRGAN, BSRGAN, ESRGAN) and the multi-frame TDAN, with what several of them share in
:mod:`models.sr.blocks` (single-frame base class, dense blocks, the RRDB generator) and
:mod:`models.sr.adversarial` (discriminators and GAN losses); modules here may import
:mod:`models.base`, :mod:`models.layers` and :mod:`sim`, never :mod:`stages` or
:mod:`pipeline`.
"""
