"""Flow building blocks that are not tied to one model family.

``rqspline``: the robust flows' modified rational-quadratic spline as pure functions;
``rq_coupling``: the conditional coupling layer built on it (a drop-in for LLFlow's affine coupling).
"""

from __future__ import annotations

from .rq_coupling import RQSplineCoupling
from .rqspline import SplineBounds, SplineParams, rq_spline, spline_knot, spline_shift, unpack_params

__all__ = [
    "RQSplineCoupling",
    "SplineBounds",
    "SplineParams",
    "rq_spline",
    "spline_knot",
    "spline_shift",
    "unpack_params",
]
