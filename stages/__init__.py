"""The chain's vocabulary: message types, the stage protocol and the stages.

``STAGES`` maps the ``kind`` of a stage in the pipeline config to its class. It is written out
by hand (no import-time scanning, no decorator side effects): to add a stage, import its class
here and add one line.
"""

from __future__ import annotations

from stages.base import Stage

#: Stage kind (as written in the pipeline config) -> stage class.
STAGES: dict[str, type[Stage]] = {}
