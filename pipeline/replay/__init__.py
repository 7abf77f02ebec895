"""Replay: feeding recorded or imported data into a chain instead of its live source.

:mod:`~pipeline.replay.plan` cuts the chain where the replayed topics enter it,
:mod:`~pipeline.replay.formats` is the one table of source formats (detection and source),
:mod:`~pipeline.replay.playback` paces, windows and loops, :mod:`~pipeline.replay.importers`
reads the file formats (MCAP recordings, image folders, npy/npz stacks, video) and
:mod:`~pipeline.replay.seqcsist` replays a SeqCSIST dataset and scores it. Modules here may
import :mod:`pipeline.attach` (recordings), :mod:`pipeline.config`, :mod:`stages`,
:mod:`models` and :mod:`sim`.
"""
