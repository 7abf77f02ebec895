"""The wire: how messages cross process and host boundaries.

:mod:`~pipeline.wire.codec` turns a message into ZeroMQ frames and back (msgpack, never
pickle; the format of ``docs/wire-format.md``), :mod:`~pipeline.wire.bus` is the thin socket
layer (one link per topic and consumer, with its queue policy), :mod:`~pipeline.wire.curve`
holds the optional CURVE encryption and client allow-list and :mod:`~pipeline.wire.ratelimit`
the warnings that summarise a flood of bad input instead of dropping it. Modules here import
:mod:`stages` (the message types) and each other, nothing else of the pipeline.
"""
