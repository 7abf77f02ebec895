"""Ceilings for every window: the Cramér–Rao bound and a count-known fit started at the truth.

The window model: each of K targets has a middle-frame position (row, col), a constant
velocity (v_row, v_col) over the window's T frames and a brightness b; frame t (offset
dt = t − T//2) shows Σ_k b_k · g(p; row_k + v_row,k dt) · g(q; col_k + v_col,k dt) with g
the pixel-integrated Gaussian of the set's PSF σ (:func:`sim.phi.pixel_response`). Each
pixel has the variance s² = noise_σ² + gain·μ (+ 1/12 for uint8 rounding), μ its expected
level; pixels at the saturation level carry no information.

- :func:`crlb_covariances`: the bound. The Fisher information F = Jᵀ diag(1/s²) J over the
  5K parameters, inverted; each target's 2×2 middle-frame position block is the least
  covariance an unbiased estimator that knows the count can reach. :func:`hit_probability`
  turns it into P(‖e‖ ≤ δ) for e ~ N(0, Σ): the AP that target allows at δ, if a method's
  scores ranked its hits first. The bound holds for unbiased estimators only: learned priors
  (a brightness range, a layout) beat it where F is nearly singular (dense groups), so it is
  reported beside the methods, never as a hard limit.
- :func:`truth_fit`: weighted least squares of that model on the window's pixels, told the
  true count and started at the truth (Levenberg–Marquardt). Not reachable in practice (it
  knows the answer it starts from); it is the count-known fit the generalization table
  reports, and it reaches the bound where the problem is well posed (tests).

Window truth (:func:`window_parameters`) comes from the dataset: the middle frame's
positions and brightness, and each target's least-squares velocity over the window's frames.
Positions are (row, col) in patch pixels, integer = pixel centre.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from models.protocol import HALF
from sim.dataset import SeqDataset
from sim.geometry import PATCH, WINDOW
from sim.phi import pixel_response, pixel_response_slope

#: Variance of uniform rounding to integers (grey levels²): 8-bit frames carry it.
ROUNDING_VARIANCE = 1.0 / 12.0
#: Parameters per target: row, col, v_row, v_col, brightness.
N_PAR = 5
#: Quadrature nodes of hit_probability's integral.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)
_Z_MAX = 9.0


def window_parameters(dataset: SeqDataset, frames: np.ndarray) -> list[np.ndarray]:
    """Per evaluated frame (dataset index, the window's middle), the true parameters
    (K, 5) = (row, col, v_row, v_col, brightness) of its targets.

    Velocities are the least-squares slopes of each target's true positions over the
    window's frames (targets keep their order, and their rows, along a trajectory).
    """
    dt = np.arange(-HALF, HALF + 1, dtype=np.float64)
    out = []
    for f in np.asarray(frames, dtype=np.int64):
        track = dataset.targets[f - HALF:f + HALF + 1]  # (T, K_max, 3)
        valid = np.all(np.isfinite(dataset.targets[f]), axis=-1)
        pos = track[:, valid, :2]  # (T, K, 2)
        slope = np.einsum("t,tka->ka", dt, pos) / (dt @ dt)
        out.append(np.column_stack([pos[HALF], slope, dataset.targets[f, valid, 2]]))
    return out


def render_window(params: np.ndarray, sigma: float, patch: int = PATCH,
                  frames: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """The window model and its Jacobian.

    Parameters
    ----------
    params : ndarray of shape (K, 5)
        (row, col, v_row, v_col, brightness) per target: px, px/frame, grey levels.
    sigma : float
        PSF std (px).

    Returns
    -------
    model : ndarray of shape (frames, patch, patch), grey levels
    jac : ndarray of shape (frames·patch², 5K): ∂model/∂params, target-major (columns
        5k … 5k + 4 are target k's parameters in the order above).
    """
    params = np.asarray(params, dtype=np.float64).reshape(-1, N_PAR)
    k = len(params)
    dt = np.arange(frames, dtype=np.float64) - frames // 2
    rows = params[None, :, 0] + dt[:, None] * params[None, :, 2]  # (T, K)
    cols = params[None, :, 1] + dt[:, None] * params[None, :, 3]
    shape = (frames, k, patch)
    gr = pixel_response(rows.ravel(), patch, sigma).T.reshape(shape)
    gc = pixel_response(cols.ravel(), patch, sigma).T.reshape(shape)
    dgr = pixel_response_slope(rows.ravel(), patch, sigma).T.reshape(shape)
    dgc = pixel_response_slope(cols.ravel(), patch, sigma).T.reshape(shape)
    b = params[:, 4][None, :, None, None]
    unit = np.einsum("tki,tkj->tkij", gr, gc)  # (T, K, P, P)
    d_row = b * np.einsum("tki,tkj->tkij", dgr, gc)
    d_col = b * np.einsum("tki,tkj->tkij", gr, dgc)
    lag = dt[:, None, None, None]
    jac = np.stack([d_row, d_col, lag * d_row, lag * d_col, unit], axis=2)  # (T, K, 5, P, P)
    model = (b * unit).sum(axis=1)
    jac = jac.transpose(0, 3, 4, 1, 2).reshape(frames * patch * patch, k * N_PAR)
    return model, jac


def pixel_variance(model: np.ndarray, noise_sigma: float, gain: float = 0.0,
                   quantized: bool = True) -> np.ndarray:
    """Variance of each pixel (grey levels²) given its expected level ``model``: read noise
    σ², shot noise gain·μ and, for 8-bit frames, the rounding's 1/12."""
    var = noise_sigma**2 + gain * np.maximum(model, 0.0)
    return var + ROUNDING_VARIANCE if quantized else np.broadcast_to(var, model.shape).copy()


def fisher_information(params: np.ndarray, sigma: float, noise_sigma: float,
                       gain: float = 0.0, quantized: bool = True,
                       saturation: float = 255.0, background: float = 0.0) -> np.ndarray:
    """Fisher information (5K, 5K) of one window's parameters; pixels whose expected level
    (targets plus ``background``) reaches ``saturation`` − ½ count for nothing."""
    model, jac = render_window(params, sigma)
    level = (model + background).ravel()
    weight = 1.0 / pixel_variance(level, noise_sigma, gain, quantized)
    weight[level >= saturation - 0.5] = 0.0
    return jac.T @ (jac * weight[:, None])


def crlb_covariances(params: np.ndarray, sigma: float, noise_sigma: float,
                     gain: float = 0.0, quantized: bool = True,
                     saturation: float = 255.0) -> np.ndarray:
    """Cramér–Rao bound of each target's middle-frame position: shape (K, 2, 2), px².

    F is inverted with a relative ridge of 1e-12 of its largest eigenvalue, so a singular
    direction (coincident targets, a target under saturated pixels) gives a huge variance
    instead of an error.
    """
    info = fisher_information(params, sigma, noise_sigma, gain, quantized, saturation)
    values, vectors = np.linalg.eigh(info)
    values = np.maximum(values, 1e-12 * max(values.max(), 1e-300))
    cov = (vectors / values) @ vectors.T
    k = len(cov) // N_PAR
    idx = np.arange(k)[:, None] * N_PAR + np.arange(2)[None, :]  # (K, 2)
    return cov[idx[:, :, None], idx[:, None, :]]


def hit_probability(cov: np.ndarray, thresholds) -> np.ndarray:
    """P(‖e‖ ≤ δ) for e ~ N(0, Σ) per covariance: shape (K, len(thresholds)).

    With λ₁ ≥ λ₂ the eigenvalues of Σ, P = ∫ φ(z) · erf(√((δ² − λ₁z²) / (2λ₂))) dz over
    |z| ≤ a = min(δ/√λ₁, 9), taken as z = a·sin u (which removes the square root's kink at
    the ends) by Gauss–Legendre with 64 nodes: exact to ~1e-12 for any ellipse.
    """
    cov = np.asarray(cov, dtype=np.float64).reshape(-1, 2, 2)
    lam = np.clip(np.linalg.eigvalsh(cov), 1e-300, None)  # ascending: (λ₂, λ₁)
    small, large = lam[:, 0][:, None, None], lam[:, 1][:, None, None]
    delta = np.asarray(thresholds, dtype=np.float64)[None, :, None]
    edge = np.minimum(delta / np.sqrt(large), _Z_MAX)  # (K, D, 1): φ is ~0 beyond _Z_MAX
    u = 0.5 * np.pi * _NODES[None, None, :]
    z = edge * np.sin(u)
    inner = np.sqrt(np.maximum(delta**2 - large * z**2, 0.0) / (2.0 * small))
    density = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
    integrand = density * erf(inner) * edge * np.cos(u)
    return np.clip(0.5 * np.pi * (_WEIGHTS * integrand).sum(axis=-1), 0.0, 1.0)


def levenberg_marquardt(residuals, theta: np.ndarray, converged, iterations: int = 30,
                        project=None):
    """Minimise Σ wᵢ rᵢ(θ)² by Levenberg–Marquardt (Marquardt's diagonal scaling).

    Parameters
    ----------
    residuals : callable
        θ (P,) → (r (N,), ∂model/∂θ (N, P), w (N,)); r is data − model, so the Jacobian of
        the model (not of r) is given.
    theta : ndarray of shape (P,)
        Start.
    converged : callable
        step (P,) → bool: stop after an accepted step for which it is true.
    project : callable, optional
        θ → θ kept inside its allowed set (applied to every trial).

    Returns
    -------
    (θ, its cost Σ w r², the Jacobian and the weights there).
    """
    theta = np.array(theta, dtype=np.float64)
    r, jac, weight = residuals(theta)
    cost, damping = float(r @ (weight * r)), 1e-3
    for _ in range(iterations):
        jtw = jac.T * weight
        normal = jtw @ jac
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9), jtw @ r)
        trial = theta + step if project is None else project(theta + step)
        trial_r, trial_jac, trial_weight = residuals(trial)
        trial_cost = float(trial_r @ (trial_weight * trial_r))
        if trial_cost <= cost:
            theta, cost, r, jac, weight = trial, trial_cost, trial_r, trial_jac, trial_weight
            damping = max(damping / 10, 1e-9)
            if converged(step):
                break
        else:
            damping *= 10
            if damping > 1e6:
                break
    return theta, cost, jac, weight


def truth_fit(window: np.ndarray, params: np.ndarray, sigma: float, noise_sigma: float,
              gain: float = 0.0, saturation: float = 255.0, iterations: int = 30,
              quantized: bool = True) -> np.ndarray:
    """Count-known fit of one window, started at the truth: parameters (K, 5).

    Levenberg–Marquardt (:func:`levenberg_marquardt`) on Σ_p (y_p − μ_p)² / s_p², s_p² the
    pixel variance at the current model, pixels at ``saturation`` − ½ or above censored.
    Stops when no position moves by 1e-7 px.

    Parameters
    ----------
    window : ndarray of shape (T, patch, patch)
        The frames, grey levels (background already subtracted where there was one).
    params : ndarray of shape (K, 5)
        Start (the truth).
    """
    y = np.asarray(window, dtype=np.float64).ravel()
    keep = y < saturation - 0.5
    shape = np.shape(params)

    def residuals(t):
        model, jac = render_window(t.reshape(shape), sigma, window.shape[-1], window.shape[0])
        weight = keep / pixel_variance(model.ravel(), noise_sigma, gain, quantized)
        return y - model.ravel(), jac, weight

    def converged(step):
        return np.abs(step.reshape(-1, N_PAR)[:, :2]).max() < 1e-7

    theta, _, _, _ = levenberg_marquardt(residuals, np.ravel(params), converged, iterations)
    return theta.reshape(-1, N_PAR)
