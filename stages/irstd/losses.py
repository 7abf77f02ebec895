"""Losses of the learned detectors. Logits and targets are (B, 1, H, W); targets in {0, 1}.

- :func:`soft_iou_loss` (DNANet's): 1 − mean over images of
  (Σ p·t + 1) / (Σ p + Σ t − Σ p·t + 1), p = sigmoid(logits). The +1 makes an image without
  targets cost 1 − 1 / (Σ p + 1): every false pixel is paid for.
- :func:`sls_loss` (MSHNet's scale-and-location-sensitive loss): the soft IoU of each image
  weighted by the scale factor α = (min(Σp, Σt) + d) / (max(Σp, Σt) + d),
  d = ((Σp − Σt) / 2)², plus the location term :func:`location_loss`; before ``warm`` is
  over, the plain soft IoU (the paper's warm-up epochs).
"""

from __future__ import annotations

import math

import torch


def _sums(logits: torch.Tensor, target: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    return p, inter, p.sum(dim=(1, 2, 3)), target.sum(dim=(1, 2, 3))


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
                  ) -> torch.Tensor:
    """1 − mean soft IoU (scalar)."""
    _, inter, ps, ts = _sums(logits, target)
    return 1 - ((inter + smooth) / (ps + ts - inter + smooth)).mean()


def location_loss(p: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """MSHNet's location term, mean over the images that have a target (0 if none):
    1 − min(ρ_p, ρ_t) / max(ρ_p, ρ_t) + (4 / π²) (θ_p − θ_t)², where (ρ, θ) are the polar
    coordinates, from the image's top-left corner, of the mean of (x / W, y / H) weighted by
    the map (probabilities p, or the target)."""
    h, w = p.shape[-2:]
    ys = torch.arange(h, dtype=p.dtype).view(1, h, 1) / h
    xs = torch.arange(w, dtype=p.dtype).view(1, 1, w) / w
    has = target.sum(dim=(1, 2, 3)) > 0
    if not bool(has.any()):
        return p.sum() * 0
    p, target = p[has, 0], target[has, 0]

    def polar(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cx, cy = (m * xs).mean(dim=(1, 2)), (m * ys).mean(dim=(1, 2))
        return torch.sqrt(cx * cx + cy * cy + eps), torch.atan(cy / (cx + eps))

    rp, ap = polar(p)
    rt, at = polar(target)
    length = 1 - torch.minimum(rp, rt) / (torch.maximum(rp, rt) + eps)
    angle = (4 / math.pi ** 2) * (ap - at) ** 2
    return (length + angle).mean()


def sls_loss(logits: torch.Tensor, target: torch.Tensor, warm: bool = True,
             smooth: float = 1.0) -> torch.Tensor:
    """MSHNet's SLS loss (scalar); ``warm=False`` during the warm-up (plain soft IoU)."""
    p, inter, ps, ts = _sums(logits, target)
    iou = (inter + smooth) / (ps + ts - inter + smooth)
    if not warm:
        return 1 - iou.mean()
    d = ((ps - ts) / 2) ** 2
    alpha = (torch.minimum(ps, ts) + d + smooth) / (torch.maximum(ps, ts) + d + smooth)
    return 1 - (alpha * iou).mean() + location_loss(p, target)
