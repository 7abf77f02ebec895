"""Learned infrared small-target detectors (IRSTD) of the SeqCSIST paper's Table VIII.

Two of the table's methods, rewritten in our code at reduced widths so that they run in the
live chain on a CPU (``DetectorConfig(kind="mshnet" | "dnanet")``):

- :mod:`stages.irstd.nets`: the networks (MSHNet, DNANet) and their building blocks;
- :mod:`stages.irstd.losses`: SoftIoU (DNANet) and the scale-and-location-sensitive SLS loss
  (MSHNet);
- :mod:`stages.irstd.data`: per-frame input normalisation (NumPy) and the simulated training
  and validation frames;
- :mod:`stages.irstd.train`: ``python -m stages.irstd.train``, the trainer (one thread,
  checkpoints, keeps the best weights on held-out scenes);
- :mod:`stages.irstd.infer`: weights loading and probability map → blobs for
  :func:`stages.detector.detect`;
- :mod:`stages.irstd.table`: ``python -m stages.irstd.table``, the Table VIII side by side
  (``benchmarks/detectors.md``).

Importing this package does not import torch; :mod:`~stages.irstd.nets`,
:mod:`~stages.irstd.losses`, :mod:`~stages.irstd.train` and :mod:`~stages.irstd.infer` do.
"""

#: Detector kinds backed by a network, and their shipped weights (``models/weights/NAME.pt``).
LEARNED_KINDS = ("mshnet", "dnanet")
