"""Building blocks shared by several model families (deformable convolution, residual blocks).

Pure ``torch.nn`` modules; they import nothing of the project but :mod:`sim.geometry`.
"""
