"""Building blocks shared by several model families (deformable convolution, residual blocks,
ISTA shrinkage functions, the ISTA-Net unfolding layer).

Pure ``torch.nn`` modules; they import nothing of the project but :mod:`sim.geometry` and
each other.
"""
