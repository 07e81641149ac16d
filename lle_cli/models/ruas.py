"""RUAS, Retinex-inspired Unrolling with Architecture Search (Liu, Ma, Zhang, Fan, Luo, CVPR 2021).

The enhancement is three unrolled Retinex stages (``IEM`` upstream), each with its own weights. Stage
``k`` estimates an illumination ``t_k`` from a prior ``t_hat`` and divides the input by it:

* ``t_hat = M(y)`` for the first stage, ``t_hat = M(u) - 0.5 (u - y)`` for the later ones, where ``y``
  is the input, ``u`` the previous stage's output and ``M`` a 2x2 forward maximum (the pixel, its
  right, lower and lower-right neighbours; zero beyond the bottom and right edges);
* ``t_k = clamp(sigmoid(cell(t_hat)), 0.001, 1)`` and ``u_k = clamp(y / t_k, 0, 1)``.

The LOL model then subtracts a noise estimate, ``out = u_3 - denoiser(u_3)``, which is not clamped;
the UPE and DarkFace models output ``u_3``, as the authors' ``test.py`` saves it (their denoiser runs
but its result is thrown away, so here it is not built: ``denoise=False``).

Both networks are searched "cells" (upstream's ``SearchBlock``): three distil/refine steps and a final
step whose four outputs a 1x1 convolution fuses; which operation sits in each of the seven slots is the
searched genotype (``genotypes.py``: ``IEM`` for the illumination cells, ``NRM`` for the denoiser's),
kept here as data in the config. A residual operation computes ``op(x) + x``, and the cell adds its
input once more on the refine path, as upstream does. Every operation is a zero-padded convolution
or pointwise, so an output pixel sees a bounded neighbourhood: the family tiles exactly.

Key names follow upstream's ``Network`` (``enhance_net.iems.<k>.cell.*``, ``denoise_net.*``) so the
authors' checkpoints load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["IEM_GENOTYPE", "NRM_GENOTYPE", "OPERATIONS", "RUAS", "RUASConfig", "RUASOutputs", "forward_max"]

# Upstream's searched genotypes, one operation per slot: c1_d, c1_r, c2_d, c2_r, c3_d, c3_r, c4
IEM_GENOTYPE = ("skip_connect", "resconv_1x1", "resdilconv_3x3", "conv_3x3", "conv_3x3", "skip_connect", "conv_3x3")
NRM_GENOTYPE = ("resconv_1x1", "resconv_1x1", "resdilconv_3x3", "skip_connect", "resconv_1x1", "resconv_1x1", "skip_connect")
SLOTS = ("c1_d", "c1_r", "c2_d", "c2_r", "c3_d", "c3_r", "c4")
# operation -> (kernel size, dilation, residual); ``skip_connect`` has no weights. These are the
# operations the released genotypes use (upstream's search space has a few more, never selected).
OPERATIONS: dict[str, tuple[int, int, bool]] = {
    "conv_1x1": (1, 1, False),
    "conv_3x3": (3, 1, False),
    "dilconv_3x3": (3, 2, False),
    "resconv_1x1": (1, 1, True),
    "resconv_3x3": (3, 1, True),
    "resdilconv_3x3": (3, 2, True),
}
LEAKY_SLOPE = 0.05  # the cells' LeakyReLU
ILLUMINATION_FLOOR = 1e-3  # upstream clamps t to [0.001, 1] before dividing by it
PRIOR_WEIGHT = 0.5  # t_hat = M(u) - 0.5 (u - y) in the later stages


@dataclass(frozen=True)
class RUASConfig:
    """Architecture; the defaults are the released LOL model (``ckpt/lol.pt``: 3 stages, then the denoiser)."""

    stages: int = 3
    enhance_channels: int = 3
    enhance_genotype: tuple[str, ...] = IEM_GENOTYPE
    # upstream's test.py saves the denoised image for ``lol`` and the one before the denoiser for ``upe``/``dark``
    denoise: bool = True
    denoise_blocks: int = 3
    denoise_channels: int = 6
    denoise_genotype: tuple[str, ...] = NRM_GENOTYPE

    def __post_init__(self) -> None:
        for name, genotype in (("enhance_genotype", self.enhance_genotype), ("denoise_genotype", self.denoise_genotype)):
            if len(genotype) != len(SLOTS) or any(op != "skip_connect" and op not in OPERATIONS for op in genotype):
                raise ValueError(f"RUAS {name} must name {len(SLOTS)} operations among {sorted(OPERATIONS)} or skip_connect, got {genotype}")
        if self.stages < 1 or self.enhance_channels < 1 or self.denoise_blocks < 0 or self.denoise_channels < 1:
            raise ValueError(f"RUAS needs at least one stage and positive widths, got {self}")

    @property
    def receptive_radius(self) -> int:
        """How far (px) an output pixel sees: each stage adds the forward maximum (1) and its cell;
        the denoiser adds its two 3x3 convolutions and its cells."""
        radius = self.stages * (1 + _cell_radius(self.enhance_genotype))
        if self.denoise:
            radius += 2 + self.denoise_blocks * _cell_radius(self.denoise_genotype)
        return radius


def _op_radius(op: str) -> int:
    if op == "skip_connect":
        return 0
    k, d, _ = OPERATIONS[op]
    return (k - 1) // 2 * d


def _cell_radius(genotype: tuple[str, ...]) -> int:
    """Receptive radius of a cell: the deepest path through its refine chain and distil branches."""
    r = [_op_radius(op) for op in genotype]
    refine1, refine2, refine3 = r[1], r[1] + r[3], r[1] + r[3] + r[5]
    return max(r[0], refine1 + r[2], refine2 + r[4], refine3 + r[6])


def forward_max(x: torch.Tensor) -> torch.Tensor:
    """Upstream's ``max_operation``: per pixel, the maximum of the 2x2 block it opens (itself, right,
    below, below-right), with zeros beyond the bottom and right edges. Exact, same size as ``x``.

    Written as two passes of shifted maxima (rows, then columns) instead of upstream's zero pad and
    slices, or a 2x2 max-pool: the same values, without the padded copy, in the input's memory format
    (a max-pool on 3 channels was a fifth of the model's time). Differentiable: every step is out of place.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        rows = torch.cat([torch.maximum(x[..., :-1, :], x[..., 1:, :]), x[..., -1:, :].clamp_min(0.0)], dim=-2)
        return torch.cat([torch.maximum(rows[..., :-1], rows[..., 1:]), rows[..., -1:].clamp_min(0.0)], dim=-1)
    rows = torch.empty_like(x)
    torch.maximum(x[..., :-1, :], x[..., 1:, :], out=rows[..., :-1, :])
    torch.clamp_min(x[..., -1:, :], 0.0, out=rows[..., -1:, :])
    out = torch.empty_like(x)
    torch.maximum(rows[..., :-1], rows[..., 1:], out=out[..., :-1])
    torch.clamp_min(rows[..., -1:], 0.0, out=out[..., -1:])
    return out


def _pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution at inference. On an NCHW input it runs as one matrix product over the
    pixels: PyTorch sends narrow 1x1 convolutions of one image on one thread to its slow im2col path
    (a quarter of RUAS's time). Channels-last inputs go to oneDNN, which is fast there."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return conv(x)
    b, c, h, w = x.shape
    y = torch.bmm(conv.weight.reshape(1, conv.out_channels, c).expand(b, -1, -1), x.contiguous().reshape(b, c, h * w))
    if conv.bias is not None:
        y.add_(conv.bias[:, None])
    return y.reshape(b, -1, h, w)


class _Operation(nn.Module):
    """One slot of a cell: upstream's ``ConvBlock`` (``op(x)``) or ``ResBlock`` (``op(x) + x``)."""

    def __init__(self, name: str, channels: int) -> None:
        super().__init__()
        k, d, self.residual = OPERATIONS[name]
        self.op = nn.Conv2d(channels, channels, k, 1, (k - 1) // 2 * d, dilation=d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            y = self.op(x)
            return y + x if self.residual else y
        y = _pointwise(x, self.op) if self.op.kernel_size == (1, 1) else self.op(x)
        return y.add_(x) if self.residual else y


class _Cell(nn.Module):
    """Upstream's ``SearchBlock``: distil/refine three times, a last operation, a 1x1 fusion of the four.

    ``d_i = act(c<i>_d(r_{i-1}))``, ``r_i = act(c<i>_r(r_{i-1}) + r_{i-1})`` (i = 1..3, ``r_0`` the input),
    ``d_4 = act(c4(r_3))``, output ``c5(cat[d_1..d_4])``; act is LeakyReLU(0.05). At inference the four
    branches are written straight into one buffer, activated together, and fused as a matrix product.
    """

    def __init__(self, channels: int, genotype: tuple[str, ...]) -> None:
        super().__init__()
        self.genotype = genotype
        for slot, op in zip(SLOTS, genotype):
            if op != "skip_connect":  # no weights, and no key upstream
                self.add_module(slot, _Operation(op, channels))
        self.c5 = nn.Conv2d(4 * channels, channels, 1)

    def _run(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        op = getattr(self, slot, None)
        return x if op is None else op(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            act = lambda t: F.leaky_relu(t, LEAKY_SLOPE)
            distilled, refined = [], x
            for i in (1, 2, 3):
                distilled.append(act(self._run(f"c{i}_d", refined)))
                # act(op(x) + x) whatever op is: a residual op adds x twice, a skip doubles it
                refined = act(self._run(f"c{i}_r", refined) + refined)
            distilled.append(act(self._run("c4", refined)))
            return self.c5(torch.cat(distilled, 1))
        c = x.shape[1]
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if nhwc:
            fused = x.new_empty((x.shape[0], x.shape[2], x.shape[3], 4 * c)).permute(0, 3, 1, 2)
        else:
            fused = x.new_empty((x.shape[0], 4 * c, x.shape[2], x.shape[3]))
        refined = x
        for i in (1, 2, 3):
            fused[:, (i - 1) * c : i * c].copy_(self._run(f"c{i}_d", refined))
            r = self._run(f"c{i}_r", refined)
            r = r.add_(refined) if r is not refined else r + refined
            refined = F.leaky_relu_(r, LEAKY_SLOPE)
        fused[:, 3 * c :].copy_(self._run("c4", refined))
        return _pointwise(F.leaky_relu_(fused, LEAKY_SLOPE), self.c5)


class _Stage(nn.Module):
    """Upstream's ``IEM``: one illumination estimate and the Retinex division."""

    def __init__(self, channels: int, genotype: tuple[str, ...]) -> None:
        super().__init__()
        self.cell = _Cell(channels, genotype)

    def forward(self, y: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u_k, t_k)`` from the input ``y`` and the previous output ``u`` (None for the first stage)."""
        if not torch.is_grad_enabled():
            t_hat = forward_max(y if u is None else u)
            if u is not None:
                t_hat.sub_(torch.sub(u, y).mul_(PRIOR_WEIGHT))
            t = self.cell(t_hat).sigmoid_().clamp_(ILLUMINATION_FLOOR, 1.0)
            return torch.div(y, t).clamp_(0.0, 1.0), t
        t_hat = forward_max(y) if u is None else forward_max(u) - PRIOR_WEIGHT * (u - y)
        t = torch.clamp(torch.sigmoid(self.cell(t_hat)), ILLUMINATION_FLOOR, 1.0)
        return torch.clamp(y / t, 0.0, 1.0), t


class _EnhanceNetwork(nn.Module):
    def __init__(self, config: RUASConfig) -> None:
        super().__init__()
        self.iems = nn.ModuleList(_Stage(config.enhance_channels, config.enhance_genotype) for _ in range(config.stages))


class _DenoiseNetwork(nn.Module):
    """Upstream's ``DenoiseNetwork``: a 3x3 stem, the cells, a 3x3 convolution to the noise ``n``."""

    def __init__(self, config: RUASConfig) -> None:
        super().__init__()
        c = config.denoise_channels
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.nrms = nn.ModuleList(_Cell(c, config.denoise_genotype) for _ in range(config.denoise_blocks))
        self.activate = nn.Sequential(nn.Conv2d(c, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The noise estimate ``n`` (the denoised image is ``x - n``)."""
        feat = self.stem(x)
        for cell in self.nrms:
            feat = cell(feat)
        return self.activate(feat)


@dataclass(frozen=True)
class RUASOutputs:
    enhanced: torch.Tensor  # what the model outputs (after the denoiser when it has one)
    stages: tuple[torch.Tensor, ...]  # u_1..u_K
    illuminations: tuple[torch.Tensor, ...]  # t_1..t_K
    noise: torch.Tensor | None  # the denoiser's n, or None


class RUAS(nn.Module):
    """``forward`` returns the enhanced image; ``forward_all`` every stage's output and illumination."""

    def __init__(self, config: RUASConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or RUASConfig()
        self.enhance_net = _EnhanceNetwork(cfg)
        if cfg.denoise:
            self.denoise_net = _DenoiseNetwork(cfg)
        else:  # the authors' UPE/DarkFace files still hold a denoiser, whose result test.py discards
            self.ignored_checkpoint_prefixes = ("denoise_net.",)

    def forward_all(self, x: torch.Tensor) -> RUASOutputs:
        u: torch.Tensor | None = None
        us, ts = [], []
        for stage in self.enhance_net.iems:
            u, t = stage(x, u)
            us.append(u)
            ts.append(t)
        noise = None
        enhanced = us[-1]
        if self.config.denoise:
            noise = self.denoise_net(enhanced)
            enhanced = enhanced - noise  # not clamped, as upstream
        return RUASOutputs(enhanced, tuple(us), tuple(ts), noise)

    def _channels_last(self) -> bool:
        """Whether the weights were put in channels-last layout (a 1x1 kernel is both layouts at once)."""
        w = next((p for p in self.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
        return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.forward_all(x).enhanced
        if self._channels_last():
            # channels-last weights (FamilySpec.channels_last): every activation follows the input's
            # layout, and oneDNN runs these 3-channel convolutions ~15x faster in NHWC than in NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        u: torch.Tensor | None = None  # inference: each stage's tensors are freed as the next one runs
        for stage in self.enhance_net.iems:
            u, _ = stage(x, u)
        if self.config.denoise:
            u = u.sub_(self.denoise_net(u))
        return u


SPEC = register_family(
    FamilySpec(
        name="ruas",
        config_cls=RUASConfig,
        model_cls=RUAS,
        description="RUAS (CVPR'21): three unrolled Retinex stages of searched cells, then (LOL) a searched denoiser",
        signature_keys=frozenset({"enhance_net.iems.0.cell.c5.weight", "enhance_net.iems.2.cell.c1_r.op.weight"}),
        # zero-padded convolutions and pointwise operations only: exact tiles. 17 px for the LOL model
        # (3 stages x (1 + 2), denoiser 1 + 3 x 2 + 1); UPE/DarkFace need only 9 but share the margin
        tile_margin=RUASConfig().receptive_radius,
        # channels-last: oneDNN runs the 3- and 6-channel 3x3 convolutions ~4x faster in NHWC than NCHW
        channels_last=True,
        # peak RSS over the input, channels-last, one thread: 252-264 B/px with the denoiser (its
        # 6-channel cells, fused buffer 96 B/px), 160-206 B/px without (2-4 MP, a bare forward); but
        # `lle enhance` of an 8 MP photo in two 4.2 MP tiles peaked at 2,644 MiB (bench/tiling.py,
        # glibc keeping freed memory as the command sets it, tiles blended): ~430 B/px of a tile
        activation_bytes=lambda c: 450.0 if c.denoise else 350.0,
    ),
)
