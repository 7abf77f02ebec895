"""Transport and orchestration of the live chain, the top layer (it may import everything).

- :mod:`pipeline.wire` — codec, socket links with queue policies, CURVE;
- :mod:`pipeline.run` — runners, worker process, stage-calling adapter, service sinks, report;
- :mod:`pipeline.attach` — tap, recorder and reader, input trace, digest, external input;
- :mod:`pipeline.replay` — replay planning, playback, importers, SeqCSIST datasets;
- at the top: the CLI (``__main__``), the config (``config``: YAML, overrides, stage plan and
  the pipeline's own stage kinds), the benchmark (``bench``) and ``subscribe``.

Only this package knows about sockets; :mod:`stages`, :mod:`models` and :mod:`sim` never import
it. Inside it, ``wire`` imports no other sub-package, ``attach`` only ``wire``, ``run`` never
``replay``.
"""
