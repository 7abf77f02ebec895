"""The wire: how messages cross process and host boundaries.

:mod:`~pipeline.wire.codec` turns a message into ZeroMQ frames and back (msgpack, never
pickle; the format of ``docs/wire-format.md``), :mod:`~pipeline.wire.bus` is the thin socket
layer (one link per topic and consumer, with its queue policy) and :mod:`~pipeline.wire.curve`
holds the optional CURVE encryption and client allow-list. Modules here import :mod:`stages`
(the message types, the rate-limited warnings) and each other, nothing else of the pipeline.
"""
