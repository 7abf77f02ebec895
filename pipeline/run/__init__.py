"""Running a chain: the runners (one process, or one process per stage), the worker process, the
adapter that calls a stage and stamps its outputs, the service sinks added to every chain, the
run report, and the capacity check before the first frame.

Modules here may import :mod:`pipeline.wire`, :mod:`pipeline.attach` (the service sinks),
:mod:`pipeline.config`, :mod:`stages` (and below them :mod:`models` and :mod:`sim`, which the
capacity check uses for its synthetic frames); they do not know about replay.
"""
