"""Modified rational-quadratic spline of the robust-flow paper (Hong et al., ICCV 2023).

The transform is a monotone rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows",
eqs. 4-6) with only two bins on the box ``[B1, B2]^2``: the two boundary knots (its corners) are fixed,
with slope 1, and the single interior knot ``(x*, y*)`` with slope ``d*`` is learnt. Outside the
interval the map is the identity, so the transform and its inverse are C^1 and have slope 1 far
away: a conditioning network that goes out of distribution can bend the map only inside a bounded
box, which is what keeps the inverse from exploding (the paper's Remark 2; appendix A.2 gives this
parametrisation). In a coupling layer the network also predicts a bias ``t``:
``y = spline(x) + t`` and ``x = spline^-1(y - t)`` (see :func:`spline_shift`).

Everything here is a pure function of tensors ``(inputs, params..., inverse=False) ->
(outputs, logabsdet)``, element-wise, with the parameters broadcast to the inputs' shape. The raw
(unnormalised) network outputs are normalised like the authors' ``rational_quadratic_spline``
(``FlowRQsplineCouplingsAblation.py``)::

    x* = B1 + (B2 - B1) * (sigmoid(w_raw) * (1 - 2 * MIN_BIN_WIDTH)  + MIN_BIN_WIDTH)
    y* = B1 + (B2 - B1) * (sigmoid(h_raw) * (1 - 2 * MIN_BIN_HEIGHT) + MIN_BIN_HEIGHT)
    d* = exp(d_raw) * (1 - MIN_DERIVATIVE) + MIN_DERIVATIVE

and, like the authors', an input on a boundary (``<= B1`` or ``>= B2``) goes through the identity
tail, an input exactly on the interior knot falls in the right-hand bin, and the spline's output is
clamped to the box. The authors' code has separate ``left/right`` and ``bottom/top`` options but
uses the same interval for both; with identity tails any other choice would not be a bijection, so
here the box is one interval. One deliberate difference: for steep knots the inverse picks the
cancellation-free form of the quadratic's root (see :func:`rq_spline`), where the authors' float32
code loses digits or divides 0 by 0; elsewhere the results agree with theirs to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "DEFAULT_LOW",
    "DEFAULT_HIGH",
    "MIN_BIN_WIDTH",
    "MIN_BIN_HEIGHT",
    "MIN_DERIVATIVE",
    "NUM_PARAMS",
    "SplineBounds",
    "SplineParams",
    "Knot",
    "spline_knot",
    "rq_spline",
    "spline_shift",
    "unpack_params",
]

# (B1, B2) = (-0.5, 0.5) in the paper's appendix A.2 and in the authors' LLFlow/SRFlow code
DEFAULT_LOW = -0.5
DEFAULT_HIGH = 0.5
# epsilon of appendix A.2: keeps both bins and the knot slope away from zero
MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# raw values the conditioning network predicts per transformed channel: width, height, slope, shift
NUM_PARAMS = 4


@dataclass(frozen=True)
class SplineBounds:
    """The interval ``[low, high]`` (the paper's ``[B1, B2]``) outside which the spline is the identity."""

    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"spline bounds need low < high, got {self}")


class Knot(NamedTuple):
    """The learnable interior knot: position ``(x, y)`` and slope ``d``."""

    x: torch.Tensor
    y: torch.Tensor
    d: torch.Tensor


class SplineParams(NamedTuple):
    """Raw network outputs for one transformed tensor, each with the tensor's shape."""

    width: torch.Tensor
    height: torch.Tensor
    derivative: torch.Tensor
    shift: torch.Tensor


def unpack_params(h: torch.Tensor, channels: int) -> SplineParams:
    """Split a conditioner output ``(B, channels * 4, H, W)`` into the four raw parameter maps.

    The authors group channels per transformed channel (``h.view(B, C, 4, H, W)``): channels
    ``4c, 4c+1, 4c+2, 4c+3`` are width, height, derivative and shift of channel ``c``. This is not
    LLFlow's even/odd ("cross") split of the affine coupling.
    """
    if h.dim() != 4 or h.shape[1] != channels * NUM_PARAMS:
        raise ValueError(f"expected a (B, {channels * NUM_PARAMS}, H, W) conditioner output, got {tuple(h.shape)}")
    g = h.view(h.shape[0], channels, NUM_PARAMS, h.shape[2], h.shape[3])
    return SplineParams(g[:, :, 0], g[:, :, 1], g[:, :, 2], g[:, :, 3])


def spline_knot(
    unnormalized_width: torch.Tensor,
    unnormalized_height: torch.Tensor,
    unnormalized_derivative: torch.Tensor,
    bounds: SplineBounds = SplineBounds(),
) -> Knot:
    """Normalise raw network outputs to the interior knot ``(x*, y*, d*)`` (appendix A.2)."""
    b = bounds
    w = torch.sigmoid(unnormalized_width) * (1 - 2 * MIN_BIN_WIDTH) + MIN_BIN_WIDTH
    h = torch.sigmoid(unnormalized_height) * (1 - 2 * MIN_BIN_HEIGHT) + MIN_BIN_HEIGHT
    d = torch.exp(unnormalized_derivative) * (1 - MIN_DERIVATIVE) + MIN_DERIVATIVE
    return Knot((b.high - b.low) * w + b.low, (b.high - b.low) * h + b.low, d)


def rq_spline(
    inputs: torch.Tensor,
    unnormalized_width: torch.Tensor,
    unnormalized_height: torch.Tensor,
    unnormalized_derivative: torch.Tensor,
    inverse: bool = False,
    bounds: SplineBounds = SplineBounds(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-bin spline ``x -> y`` (or ``y -> x`` when ``inverse``) and ``log|d out / d in|``.

    Parameters broadcast against ``inputs``. Outside the box the output is the input and the
    log-derivative is 0. Written with ``torch.where`` on clamped inputs rather than masked
    indexing, so gradients stay finite for inputs far outside the box (up to 1e4 and beyond).
    """
    b = bounds
    knot = spline_knot(unnormalized_width, unnormalized_height, unnormalized_derivative, b)
    inside = (inputs > b.low) & (inputs < b.high)
    u = inputs.clamp(b.low, b.high)  # keeps the unused branch finite, so where() has finite gradients
    right_bin = u >= (knot.y if inverse else knot.x)  # on the knot: the right bin, as the authors

    x_k = torch.where(right_bin, knot.x, b.low)
    y_k = torch.where(right_bin, knot.y, b.low)
    bin_w = torch.where(right_bin, b.high - knot.x, knot.x - b.low)
    bin_h = torch.where(right_bin, b.high - knot.y, knot.y - b.low)
    d_k = torch.where(right_bin, knot.d, 1.0)  # slope at the bin's left end
    d_k1 = torch.where(right_bin, 1.0, knot.d)  # slope at the bin's right end
    delta = bin_h / bin_w
    curvature = d_k + d_k1 - 2 * delta

    if inverse:
        # Solve a*theta^2 + b*theta + c = 0 (NSF eq. 6 rearranged) for its root in [0, 1]. Like
        # nflows and the authors, take 2c / (-b - sqrt(b^2 - 4ac)), which does not cancel when
        # b >= 0; b < 0 happens only for steep knots (d* >~ 1e4), where that form cancels to 0/0
        # in float32 and (-b + sqrt(b^2 - 4ac)) / 2a (a > 0 there) is the stable one.
        rel = u - y_k
        qa = rel * curvature + bin_h * (delta - d_k)
        qb = bin_h * d_k - rel * curvature
        qc = -delta * rel
        # >= 0 up to rounding; the floor (not 0) keeps sqrt's gradient finite, so an unused
        # where() branch cannot turn a zero gradient into 0 * inf = NaN
        sq = torch.sqrt((qb.pow(2) - 4 * qa * qc).clamp_min(torch.finfo(qb.dtype).tiny))
        first = qb >= 0
        theta = torch.where(first, 2 * qc, sq - qb) / torch.where(first, -qb - sq, 2 * qa)
        theta = theta.clamp(0, 1)  # rounding only; outside [0, 1] the log-derivative is undefined
        out = (theta * bin_w + x_k).clamp(b.low, b.high)
    else:
        theta = (u - x_k) / bin_w
    t1mt = theta * (1 - theta)
    denominator = delta + curvature * t1mt
    deriv_numerator = delta.pow(2) * (d_k1 * theta.pow(2) + 2 * delta * t1mt + d_k * (1 - theta).pow(2))
    logabsdet = torch.log(deriv_numerator) - 2 * torch.log(denominator)  # NSF eq. 5
    if inverse:
        logabsdet = -logabsdet
    else:
        numerator = bin_h * (delta * theta.pow(2) + d_k * t1mt)
        out = (y_k + numerator / denominator).clamp(b.low, b.high)  # NSF eq. 4

    outputs = torch.where(inside, out, inputs)
    logabsdet = logabsdet.masked_fill(~inside, 0.0)
    return outputs, logabsdet


def spline_shift(
    inputs: torch.Tensor,
    params: SplineParams,
    inverse: bool = False,
    bounds: SplineBounds = SplineBounds(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coupling's element transform: ``y = spline(x) + t``, inverse ``x = spline^-1(y - t)``.

    The shift ``t`` is used raw (unbounded); the log-derivative is the spline's alone.
    """
    if inverse:
        return rq_spline(inputs - params.shift, params.width, params.height, params.derivative, True, bounds)
    out, logabsdet = rq_spline(inputs, params.width, params.height, params.derivative, False, bounds)
    return out + params.shift, logabsdet
