"""Attaching to a running chain from outside: the tap (every topic on one PUB endpoint), the
MCAP recorder and reader, the input trace for lossless replay, the ``outputs_digest`` and the
external-input gate through which another program's messages enter the chain.

Every sink here is a :class:`stages.base.TopicSink`. Modules here may import
:mod:`pipeline.wire` and :mod:`stages`, never :mod:`pipeline.run` or :mod:`pipeline.replay`.
"""
