"""Transport and orchestration of the live chain: codec, bus, config, runner, report, CLI.

Only this package knows about sockets; the stages in :mod:`stages` never import it.
"""
