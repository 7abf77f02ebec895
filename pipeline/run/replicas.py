"""Replicated stages: ``replicas: N`` on a per-message stage (the unmixer, the extractor).

In processes mode such a stage runs as N processes, its *instances*, named ``<stage>.0`` …
``<stage>.<N−1>`` (config names cannot contain a dot, so they never collide). Every producer
instance has one link to every consumer instance, as for any stage, and
:mod:`pipeline.wire.bus` gives those links two rules:

- **Sharing the load.** A producer sends each message to *one* replica: the first whose link
  has room, in round-robin order. That is credit-based flow control with ZeroMQ's own
  high-water mark as the credit: a replica that falls behind fills its link and is passed
  over until it has room again, so replicas of unequal speed (on other hosts) each take what
  they can. One PUSH/PULL (lossless) or XPUB/SUB (live) link per replica, rather than one
  PUSH socket that ZeroMQ load-balances itself, because a producer must be able to address
  each replica: to end its stream with its own EndOfStream marker, and to stop sending to a
  replica that died (a shared PUSH socket keeps queuing for a peer until it disconnects).
- **One ordered stream again.** A consumer merges the links from the replicas back into
  ``seq`` order (each replica's stream rises; the smallest head goes once every live replica
  has one waiting), so downstream stages, stateful ones included, see one ordered stream, and
  a lossless run's outputs are those of a single process.

A replica that dies mid-run (killed, crashed) does not end the run while one of its siblings
lives: the runner logs it, lists it in the report's ``replicas_lost``, and marks it dead, so
its producers send to the others and its consumers stop waiting for it. What it held is
lost: the messages queued on its input link and the one it was processing (at most ``hwm``
+ 1 per producer link); the consumers count them as ``seq_gaps`` of the merged stream. The
chain goes on with the remaining replicas. Inline runs build one instance whatever ``replicas``
says.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import StagePlan


def instances(plan: StagePlan) -> list[str]:
    """The process names of a stage: its own name, or ``<name>.<k>`` for each replica."""
    if plan.replicas == 1:
        return [plan.name]
    return [f"{plan.name}.{k}" for k in range(plan.replicas)]


def siblings(plans: Sequence[StagePlan]) -> dict[str, list[str]]:
    """Instance name -> every instance of the same stage (itself included), for the
    replicated stages only."""
    out = {}
    for plan in plans:
        if plan.replicas > 1:
            names = instances(plan)
            out.update({name: names for name in names})
    return out
