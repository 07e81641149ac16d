"""URetinex-Net, Retinex-based deep unfolding (Wu, Weng, Zhang, Wang, Yang, Jiang, CVPR 2022).

The authors' ``test.py`` runs four networks from three checkpoint files:

* ``init_low.pth``, the decomposition net (four 3x3 convolutions, LeakyReLU 0.2, a final ReLU): its
  four output channels are an initial reflectance ``R`` (0-2) and illumination ``L`` (3);
* ``unfolding.pth``, the two unfolded proximal nets, applied in each of ``rounds`` rounds:
  ``restore(P, Q)`` (``HalfDnCNNSE``: P and Q lifted to 32 channels each, concatenated, a
  squeeze-and-excitation over the whole image, five 64-channel 3x3 convolutions, a residual
  ``P + n``) and ``illuminate(Q)`` (``Illumination_Alone``: four 5x5 convolutions and a 1x1);
* ``L_adjust.pth``, the adjustment net (four 5x5 convolutions on ``[L, ratio]``, final ReLU).

Round 0 takes ``P, Q`` from the decomposition; round ``t >= 1`` solves the two least-squares steps
in closed form: ``P = (I Q + g R) / (g + Q^2)`` per channel and
``Q = (sum_c I_c P_c + l L) / (sum_c P_c^2 + l)``, with ``g = gamma + r_offset t`` and
``l = lamda + l_offset t``; then ``R = restore(P, Q)``, ``L = illuminate(Q)``. The output is
``adjust(L, ratio) * R``, not clamped (bright inputs exceed 1). ``ratio`` is the exposure ratio of
the illumination adjustment: a constant map, 5 in ``test.py`` (its argparse default; "3-5 are
recommended, bigger ratios over-expose"). The authors' ``evaluate.py``, used for the paper's table,
instead derives the ratio from the ground-truth image through a second decomposition net
(``init_high.pth``): ``ratio = 1 / (mean(L_low / (L_high + 1e-4)) + 1e-4)``; ``forward_all`` does
the same when given a reference.

The unfolding constants (rounds, gamma, lamda and the offsets) are pickled in ``unfolding.pth`` as
an ``argparse.Namespace``; they are this family's config, checked against that file on import.

The squeeze-and-excitation averages over the whole image, so no output pixel is local: the family
is never tiled. What bounds a large photo's memory instead is that, at inference, ``forward`` keeps
only the unfolding's few-channel maps at full size and runs every network in strips of rows with a
halo as tall as its receptive radius, the squeeze-excite means summed over the strips beforehand;
the result is the whole-image one up to float rounding.

Key names are upstream's, under the name of the file each network comes from
(``init_low.model_R.decom.0.weight``, ``unfolding.model_R.conv1.weight``,
``unfolding.model_L.conv5.weight``, ``L_adjust.model_A.conv1.weight``, ``init_high.model_R.*``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["URetinexConfig", "URetinexNet", "URetinexOutputs", "update_p", "update_q"]

LEAKY_SLOPE = 0.2
# At inference, a strip of rows holds about this many pixels while a network runs on it: the
# reflectance net keeps a few 64-channel float32 maps per pixel (~900 B), so a strip costs ~450 MiB
# whatever the photo's size, and its halo rows (7-8 above and below) add little work.
STRIP_PIXELS = 1 << 19
RATIO_EPS = 1e-4  # evaluate.py's get_ratio: 1 / (mean(L_low / (L_high + 1e-4)) + 1e-4)


@dataclass(frozen=True)
class URetinexConfig:
    """Architecture and test-time constants; the defaults are the released model run by ``test.py``."""

    rounds: int = 3  # unfolding rounds (opts.round)
    gamma: float = 0.1  # weight of ||P - R||^2 in round t: gamma + r_offset * t
    lamda: float = 0.5  # weight of ||Q - L||^2 in round t: lamda + l_offset * t
    r_offset: float = 0.05
    l_offset: float = 0.05
    ratio: float = 5.0  # exposure ratio fed to the adjustment net (test.py's --ratio default)
    width: int = 32  # decomposition, illumination and adjustment nets
    restore_width: int = 64  # the reflectance net after P and Q are concatenated
    se_reduction: int = 16

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.width < 1 or self.restore_width < 2 or self.restore_width % 2:
            raise ValueError(f"URetinex needs at least one round and positive (even restore) widths, got {self}")
        if not (self.ratio > 0 and self.gamma + self.r_offset > 0 and self.lamda + self.l_offset > 0):
            raise ValueError(f"URetinex needs a positive ratio and positive unfolding weights, got {self}")


# Which options pickled in each authors' file are this config's fields (checked on import by
# lle_cli.loading): a file trained with other unfolding constants is refused, not silently misused.
UPSTREAM_OPTIONS = {
    "unfolding": {"round": "rounds", "gamma": "gamma", "lamda": "lamda", "Roffset": "r_offset", "Loffset": "l_offset"},
}


def update_p(image: torch.Tensor, q: torch.Tensor, r: torch.Tensor, weight: float) -> torch.Tensor:
    """argmin_P ||I - P Q||^2 + w ||P - R||^2, per channel: ``(I Q + w R) / (w + Q^2)`` (upstream's ``P``)."""
    return (image * q + weight * r) / (weight + q * q)


def update_q(image: torch.Tensor, p: torch.Tensor, l: torch.Tensor, weight: float) -> torch.Tensor:
    """argmin_Q ||I - P Q||^2 + w ||Q - L||^2 over the three channels (upstream's ``Q``), summed in its order."""
    i0, i1, i2 = image[:, 0:1], image[:, 1:2], image[:, 2:3]
    p0, p1, p2 = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    return (i0 * p0 + i1 * p1 + i2 * p2 + weight * l) / ((p0 * p0 + p1 * p1 + p2 * p2) + weight)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, 1, k // 2)


class _Decom(nn.Module):
    """Upstream's ``Decom``: a Sequential named ``decom`` (convolutions at 0, 2, 4, 6)."""

    RADIUS = 4  # four 3x3 convolutions

    def __init__(self, width: int) -> None:
        super().__init__()
        act = lambda: nn.LeakyReLU(LEAKY_SLOPE)
        self.decom = nn.Sequential(
            _conv(3, width, 3), act(), _conv(width, width, 3), act(), _conv(width, width, 3), act(), _conv(width, 4, 3), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decom(x)
        return out[:, 0:3], out[:, 3:4]


class _SqueezeExcite(nn.Module):
    """Upstream's ``SELayer``: channel weights from the image-wide mean of each channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(), nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.weights(F.adaptive_avg_pool2d(x, 1).view(b, c))

    def weights(self, mean: torch.Tensor) -> torch.Tensor:
        """(B, C) channel means -> (B, C, 1, 1) channel weights; the strip path gives means it summed."""
        b, c = mean.shape
        return self.fc(mean).view(b, c, 1, 1)


class _Restore(nn.Module):
    """Upstream's ``HalfDnCNNSE`` with ``concat_L``: the reflectance proximal net, ``P + n(P, Q)``."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = _conv(3, half, 3)
        self.conv2 = _conv(1, half, 3)
        self.se_layer = _SqueezeExcite(width, reduction)
        for i in range(3, 8):
            self.add_module(f"conv{i}", _conv(width, width, 3))
        self.conv8 = _conv(width, 3, 3)

    # receptive radius: conv1/conv2 (1 px, the squeeze-excite input), then conv3..conv8 (6 px)
    SE_RADIUS = 1
    RADIUS = 7

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.body(p, self.se_layer(self.se_input(p, q)))

    def se_input(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The 64 channels the squeeze-excite weighs: P and Q lifted to 32 channels each."""
        return torch.cat([F.relu(self.conv1(p)), F.relu(self.conv2(q))], 1)

    def body(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``P + n``: the convolutions after the squeeze-excite, on its weighted output ``x``."""
        for i in range(3, 8):
            x = F.relu(getattr(self, f"conv{i}")(x))
        return p + self.conv8(x)


class _Illuminate(nn.Module):
    """Upstream's ``Illumination_Alone``: four 5x5 convolutions (LeakyReLU 0.2), a 1x1, ReLU."""

    RADIUS = 8  # four 5x5 convolutions

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(1, width, 5)
        for i in range(2, 5):
            self.add_module(f"conv{i}", _conv(width, width, 5))
        self.conv5 = _conv(width, 1, 1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        x = q
        for i in range(1, 5):
            x = F.leaky_relu(getattr(self, f"conv{i}")(x), LEAKY_SLOPE)
        return F.relu(self.conv5(x))


class _Adjust(nn.Module):
    """Upstream's ``Adjust_naive``: four 5x5 convolutions on ``[L, ratio]``, LeakyReLU 0.2 between, final ReLU."""

    RADIUS = 8  # four 5x5 convolutions

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(2, width, 5)
        self.conv2 = _conv(width, width, 5)
        self.conv3 = _conv(width, width, 5)
        self.conv4 = _conv(width, 1, 5)

    def forward(self, light: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        x = self.conv1(torch.cat([light, ratio], 1))
        for conv in (self.conv2, self.conv3, self.conv4):
            x = conv(F.leaky_relu(x, LEAKY_SLOPE))
        return F.relu(x)


class _Holder(nn.Module):
    """Groups networks under the key prefix of the authors' file they come from (``model_R``, ...)."""

    def __init__(self, **nets: nn.Module) -> None:
        super().__init__()
        for name, net in nets.items():
            self.add_module(name, net)


class URetinexOutputs(NamedTuple):
    enhanced: torch.Tensor  # adjusted_L * R, not clamped
    adjusted_illumination: torch.Tensor  # adjust(L, ratio), 1 channel
    illumination: torch.Tensor  # L after the last round
    reflectance: torch.Tensor  # R after the last round
    init_illumination: torch.Tensor  # the decomposition's L (channel 3)
    init_reflectance: torch.Tensor  # the decomposition's R (channels 0-2)
    ratio: torch.Tensor  # the ratio used, one per image (B,)


class URetinexNet(nn.Module):
    """``forward`` returns the enhanced image at ``config.ratio``; ``forward_all`` every intermediate,
    at another ratio, or at the ratio ``evaluate.py`` derives from a reference image."""

    # L_adjust.pth also stores the nets it was trained on top of; test.py only takes model_A from it
    ignored_checkpoint_prefixes = ("L_adjust.model_decom.", "L_adjust.model_R.", "L_adjust.model_L.")
    upstream_options = UPSTREAM_OPTIONS

    def __init__(self, config: URetinexConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or URetinexConfig()
        self.init_low = _Holder(model_R=_Decom(cfg.width))
        self.unfolding = _Holder(model_R=_Restore(cfg.restore_width, cfg.se_reduction), model_L=_Illuminate(cfg.width))
        self.L_adjust = _Holder(model_A=_Adjust(cfg.width))
        # evaluate.py's decomposition of the reference image: not on forward's path, so frozen (no
        # gradient would ever reach it); forward_all(reference=...) uses it
        self.init_high = _Holder(model_R=_Decom(cfg.width)).requires_grad_(False)

    def unfold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(R, L, R_0, L_0)``: the last round's reflectance and illumination, and the decomposition's."""
        cfg = self.config
        restore, illuminate = self.unfolding.model_R, self.unfolding.model_L
        p, q = self.init_low.model_R(x)
        p0, q0 = p, q
        r, light = restore(p, q), illuminate(q)
        for t in range(1, cfg.rounds):
            # Python floats, as upstream (0.15000000000000002, 0.55, ...)
            p = update_p(x, q, r, cfg.gamma + cfg.r_offset * t)
            q = update_q(x, p, light, cfg.lamda + cfg.l_offset * t)
            r, light = restore(p, q), illuminate(q)
        return r, light, p0, q0

    def reference_ratio(self, light: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """evaluate.py's ratio, one per image: ``1 / (mean(L / (L_ref + 1e-4)) + 1e-4)``, with ``L_ref``
        the reference image's illumination from the ``init_high`` decomposition."""
        _, high = self.init_high.model_R(reference)
        return 1 / ((light / (high + RATIO_EPS)).mean(dim=(1, 2, 3)) + RATIO_EPS)

    def forward_all(
        self, x: torch.Tensor, *, ratio: float | torch.Tensor | None = None, reference: torch.Tensor | None = None
    ) -> URetinexOutputs:
        """Every intermediate; ``ratio`` (a number or one per image) or ``reference`` (the normal-light
        image, evaluate.py's protocol) override ``config.ratio``."""
        r, light, r0, l0 = self.unfold(x)
        if reference is not None:
            if ratio is not None:
                raise ValueError("give a ratio or a reference image, not both")
            ratio = self.reference_ratio(light, reference)
        if ratio is None:
            ratio = self.config.ratio
        ratios = torch.as_tensor(ratio, dtype=light.dtype, device=light.device).reshape(-1).expand(light.shape[0])
        ratio_map = torch.ones_like(light) * ratios.view(-1, 1, 1, 1)
        adjusted = self.L_adjust.model_A(light, ratio_map)
        return URetinexOutputs(adjusted * r, adjusted, light, r, l0, r0, ratios)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if torch.is_grad_enabled() or h * w <= STRIP_PIXELS:
            r, light, _, _ = self.unfold(x)
            # upstream's map is torch.ones(L.shape) * ratio
            adjusted = self.L_adjust.model_A(light, torch.full_like(light, self.config.ratio))
            return adjusted * r
        return self._forward_in_strips(x)

    def _forward_in_strips(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` at inference on a large image, equal up to float rounding, in bounded memory.

        Only the per-pixel state of the unfolding (x, P, Q, R, L: 1-3 channels each) is kept at full
        size; every network runs strip by strip (``_map_rows``) with as many extra rows as its
        receptive radius, and the reflectance net's image-wide squeeze-excite mean is summed over
        the strips first (``_restore_in_strips``). The closed-form updates are per pixel.
        """
        cfg = self.config
        decom, adjust = self.init_low.model_R, self.L_adjust.model_A
        restore, illuminate = self.unfolding.model_R, self.unfolding.model_L
        p, q = _map_rows(decom, (x,), decom.RADIUS)
        r, (light,) = _restore_in_strips(restore, p, q), _map_rows(illuminate, (q,), illuminate.RADIUS)
        for t in range(1, cfg.rounds):
            g, l = cfg.gamma + cfg.r_offset * t, cfg.lamda + cfg.l_offset * t  # Python floats, as unfold
            # in strips too (radius 0): their few full-size temporaries would otherwise outweigh the state
            (p,) = _map_rows(lambda xs, qs, rs, g=g: update_p(xs, qs, rs, g), (x, q, r), 0)
            (q,) = _map_rows(lambda xs, ps, ls, l=l: update_q(xs, ps, ls, l), (x, p, light), 0)
            del r, light  # the previous round's, freed before the nets allocate the new ones
            r, (light,) = _restore_in_strips(restore, p, q), _map_rows(illuminate, (q,), illuminate.RADIUS)
        ratio = cfg.ratio
        (out,) = _map_rows(lambda ls, rs: adjust(ls, torch.full_like(ls, ratio)) * rs, (light, r), adjust.RADIUS)
        return out


def _map_rows(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...], radius: int
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)`` (every output the inputs' height and width) computed over strips of ~STRIP_PIXELS.

    Each strip runs with ``radius`` extra rows above and below where the image has them, so the rows
    kept see exactly the pixels (and, at the image's own edges, the zero padding) they see when
    ``fn`` runs on the whole image; the rows that see the strip's own padding are dropped.
    """
    h, w = inputs[0].shape[-2:]
    rows = max(STRIP_PIXELS // w, 2 * radius, 1)  # a strip at least as tall as its two halos
    outs: tuple[torch.Tensor, ...] = ()
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, b = max(0, y0 - radius), min(h, y1 + radius)
        res = fn(*(t[..., a:b, :] for t in inputs))
        res = (res,) if isinstance(res, torch.Tensor) else res
        if not outs:
            outs = tuple(o.new_empty((*o.shape[:-2], h, w)) for o in res)
        for full, o in zip(outs, res):
            full[..., y0:y1, :] = o[..., y0 - a : y1 - a, :]
    return outs


def _restore_in_strips(restore: _Restore, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``restore(p, q)`` in two passes over strips: the squeeze-excite's channel means, then the net.

    The squeeze-excite input is two 3x3 convolutions of P and Q, so the first pass computes it per
    strip with a 1-row halo and sums only the rows a strip owns (float32 at least, over every pixel
    once); the second recomputes it with the net's full halo and applies the weights from those means.
    """
    h, w = p.shape[-2:]
    rows = max(STRIP_PIXELS // w, 2 * restore.SE_RADIUS)
    total = None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, b = max(0, y0 - restore.SE_RADIUS), min(h, y1 + restore.SE_RADIUS)
        feats = restore.se_input(p[..., a:b, :], q[..., a:b, :])[..., y0 - a : y1 - a, :]
        part = feats.sum(dim=(2, 3), dtype=torch.promote_types(feats.dtype, torch.float32))
        total = part if total is None else total + part
        del feats
    weights = restore.se_layer.weights((total / (h * w)).to(p.dtype))
    (out,) = _map_rows(lambda ps, qs: restore.body(ps, restore.se_input(ps, qs) * weights), (p, q), restore.RADIUS)
    return out


def _receptive_radius(cfg: URetinexConfig) -> int:
    """How far (px) an output pixel's local path reaches, besides the image-wide SE means: decomposition
    4 x 1; per round restore 7 x 1 or illuminate 4 x 2; adjustment 4 x 2."""
    per_round = max(7, 4 * 2)
    return 4 + cfg.rounds * per_round + 4 * 2


SPEC = register_family(
    FamilySpec(
        name="uretinex",
        config_cls=URetinexConfig,
        model_cls=URetinexNet,
        description="URetinex-Net (CVPR'22): decomposition, unfolded P/Q updates with proximal nets, illumination adjustment at a ratio",
        signature_keys=frozenset(
            {"init_low.model_R.decom.0.weight", "unfolding.model_R.se_layer.fc.0.weight", "L_adjust.model_A.conv1.weight"}
        ),
        # Not tileable: the reflectance net's squeeze-and-excitation weighs its 64 channels by their
        # mean over the whole image (in every round), so a tile would weigh them differently. It
        # always runs whole; its local receptive radius is 4 + 3 x 8 + 8 = 36 px. Its own strips
        # (``_forward_in_strips``) bound its memory instead.
        tileable=False,
        tile_exact=False,
        tile_margin=_receptive_radius(URetinexConfig()),
        # whole-image part (informative: a family that is never tiled is not planned): the
        # unfolding's full-size maps (x, P, Q, R, L, the output, a round's new P and Q), at most
        # ~15 float32 channels; 30 B/px measured (peak RSS of the forward over the input, one thread,
        # 1-2 MP). The strips are the fixed part: a few 64-channel maps per strip pixel, ~900 B (the
        # 879-886 B/px the whole-image forward took), 472 MiB measured. `lle enhance` of a
        # 3840x2160 photo: 2,502 MiB whole process, 13,878 MiB when it ran whole (VmHWM, fresh
        # process, the same PNG but for 10 values off by 1); 1,104 MiB at 1920x1080.
        activation_bytes=lambda c: 60.0,
        workspace_mb=lambda c: 960.0 * STRIP_PIXELS / 2**20 * c.restore_width / 64,
    ),
)
