"""The task's fixed geometry: the one place these numbers are written.

- ``WINDOW`` frames per window (the middle one is the frame being unmixed);
- ``PATCH`` × ``PATCH`` low-resolution (LR) pixels per frame patch;
- ``RATIO`` high-resolution (HR) cells per LR pixel along each axis;
- ``HR`` = ``PATCH`` · ``RATIO`` cells per side of an output map;
- ``SIGMA`` the optical point-spread function's standard deviation, in LR pixels.

Pure constants: importing this module costs nothing (no NumPy, no torch).
"""

WINDOW = 5
PATCH = 11
RATIO = 3
HR = PATCH * RATIO
SIGMA = 0.5
