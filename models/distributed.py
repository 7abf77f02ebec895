"""Data-parallel training and evaluation across processes (``torchrun``), and the one-process
case as its degenerate form.

Under ``torchrun --nproc_per_node N -m models train|evaluate ...`` every process (rank) reads
``RANK``, ``WORLD_SIZE`` and the rendezvous address from its environment and joins one process
group: ``gloo`` on CPU, ``nccl`` on CUDA. Without ``torchrun`` (no ``WORLD_SIZE``, or 1) there is
one rank and nothing is initialised.

- Training (:class:`models.train.Trainer`) wraps the model in ``DistributedDataParallel``
  (through :class:`SequenceForward`, since training calls ``forward_sequences``), shards each
  step's trajectories over the ranks, keeps the time budget in step across ranks and leaves
  validation, checkpoints, logs and weights to rank 0.
- Evaluation (``models evaluate``) predicts a strided shard of the trajectories on each rank
  and gathers every frame's detections on rank 0, which scores them all at once: CSO-mAP pools
  the matches of all frames, so shards merge detections, never APs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Ranks:
    """Where this process stands in its process group.

    Attributes
    ----------
    rank : int
        This process's index, 0 … world − 1.
    world : int
        Number of processes (1: not distributed).
    """

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, logs, checkpoints and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def max(self, value: float) -> float:
        """The largest ``value`` over all ranks (every rank gets it)."""
        if not self.distributed:
            return value
        on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces CUDA tensors only
        t = torch.tensor([value], dtype=torch.float64, device=on)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out


def join(device: torch.device | str = "cpu") -> Ranks:
    """Join the process group ``torchrun`` set up in the environment (``gloo`` on CPU,
    ``nccl`` on CUDA; on CUDA each rank takes GPU ``LOCAL_RANK``); without it, one rank.

    Raises
    ------
    RuntimeError
        ``WORLD_SIZE`` > 1 but no ``RANK`` (not started by ``torchrun`` or similar).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if "RANK" not in os.environ:
        raise RuntimeError("WORLD_SIZE is set but RANK is not: start the ranks with torchrun "
                           "(torchrun --nproc_per_node N -m models ...)")
    device = torch.device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size())


def leave(ranks: Ranks) -> None:
    """Leave the process group (after a last barrier, so no rank leaves while others talk)."""
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class SequenceForward(torch.nn.Module):
    """``model.forward_sequences`` as a module's ``forward``, so ``DistributedDataParallel``
    (which hooks ``forward`` only) can wrap the call training makes.

    Parameters
    ----------
    model : UnmixingModel
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, start_index: torch.Tensor):
        """frames (N, L, 11, 11), start_index (N,) → (maps (N, L − 4, 33, 33), aux losses)."""
        return self.model.forward_sequences(frames, start_index)


def sequence_forward(model: torch.nn.Module, ranks: Ranks, device: torch.device):
    """The training forward of ``model``: its ``forward_sequences`` in one process, the same
    through ``DistributedDataParallel`` when ``ranks`` is distributed (gradients are averaged
    over the ranks in ``backward``)."""
    if not ranks.distributed:
        return model.forward_sequences
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(SequenceForward(model),
                                   device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)
