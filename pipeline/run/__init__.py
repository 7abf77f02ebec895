"""Running a chain: the runners (one process, or one process per stage), the worker process, the
adapter that calls a stage and stamps its outputs, the service sinks added to every chain, and
the run report.

Modules here may import :mod:`pipeline.wire`, :mod:`pipeline.attach` (the service sinks),
:mod:`pipeline.config` and :mod:`stages`; they do not know about replay.
"""
