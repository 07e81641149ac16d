"""IAT, the Illumination Adaptive Transformer (Cui et al., BMVC 2022).

Two branches see the input (IAT_enhance/model/IAT_main.py):

* a **local** branch, a 3x3 convolution and two stacks of three depthwise-convolution blocks, which
  predicts per-pixel maps ``mul`` (ReLU) and ``add`` (tanh); the local estimate is ``x * mul + add``;
* a **global** branch, two stride-2 convolutions, then ten learnt queries attending over all of the
  image's tokens, which predicts one exponent ``gamma`` and one 3x3 colour matrix ``M`` per image.

The output is ``clamp(M applied per pixel to the local estimate, 1e-8, 1) ** gamma``. Key names follow
upstream's ``IAT`` so the authors' checkpoints load as they are. Dropout and DropPath are identities
at inference and are left out.

lle's photo stage (``IATConfig.exposure_transfer``, off for the authors' weights, on for
``iat.lle-photo``): the network's image is not the output; its exposure is applied to the photo.
A network trained on LOL learns LOL's targets: it denoises very dark scenes well, but on an
ordinary dim or backlit photo it also smooths texture, mutes colours and pushes bright channels
(lamps, skin in sunlight) to white. The stage keeps the photo's own detail and colour and takes only
the brightening from the network (``transfer_exposure``): a gain map, the ratio of the network's
local mean luminance to the photo's; where that gain is large (a very dark scene, where the photo's
own detail is mostly noise) it falls back to the network's image; and highlights are compressed by
a smooth shoulder below white rather than clipped (``highlight_shoulder``), so a bright channel keeps
its gradations. bench/default_choice.py measures what it changes.

The global branch makes every output pixel depend on the whole image, so tiles cannot reproduce the
untiled result: the family is never tiled (see the spec below). What keeps a large photo's memory
bounded instead is that, at inference, both branches run in strips of rows: the local one with a
halo as wide as its receptive field, the global one's convolutions likewise and its attention as a
softmax accumulated over the strips; the result is the same as running it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = [
    "IATConfig", "IAT", "IATOutputs", "apply_color_and_gamma", "QUERIES",
    "luminance", "box_blur", "exposure_gain", "highlight_shoulder", "transfer_exposure",
]

QUERIES = 10  # upstream's learnt queries: token 0 gives gamma, tokens 1..9 the colour matrix
# A local-branch strip holds about this many pixels (~1 KB of activations each, see the spec):
# large enough that the halo rows add little work, small enough to bound the memory of any photo.
STRIP_PIXELS = 1 << 19


@dataclass(frozen=True)
class IATConfig:
    """Architecture; the defaults are the released IAT (lol_v1, lol_v2, exposure: 91,154 parameters)."""

    local_width: int = 16
    local_blocks: int = 3  # per stack (``mul_blocks``, ``add_blocks``)
    mlp_ratio: int = 4
    global_width: int = 64
    global_heads: int = 4
    # evaluation_lol_v2.py feeds the LOL-v2 weights ``Normalize(0.5, 0.5)``'d images, in [-1, 1];
    # the LOL-v1 and exposure scripts feed [0, 1]
    normalize_input: bool = False
    # lle's photo stage (module docstring, ``transfer_exposure``); off: the network's image, as upstream
    exposure_transfer: bool = False
    transfer_radius: int = 6  # px: the box over which the local mean luminances are taken
    transfer_blend: tuple[float, float] = (3.0, 8.0)  # gain where the network's image starts / fully takes over
    shoulder: tuple[float, float] = (0.75, 0.99)  # knee and ceiling of the highlight shoulder

    @property
    def local_margin(self) -> int:
        """Receptive radius of the local branch: 3x3 in, 1 + 2 px per block (3x3 and 5x5 depthwise), 3x3 out."""
        return 1 + 3 * self.local_blocks + 1


def apply_color_and_gamma(local: torch.Tensor, color: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``clamp(M @ pixel, 1e-8, 1) ** gamma`` per image: ``out_c = sum_k M[c, k] * local_k``.

    ``local`` (B, 3, H, W), ``color`` (B, 3, 3), ``gamma`` (B, 1). The floor keeps a negative or zero
    mix finite under any exponent; nothing above 1 survives, as upstream.
    """
    mixed = torch.einsum("bkhw,bck->bchw", local, color)
    return mixed.clamp(1e-8, 1.0).pow(gamma.reshape(-1, 1, 1, 1))


# -- lle's photo stage: the network's exposure on the photo ----------------------------------------

_LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights on the sRGB values: a brightness, not a colorimetric Y


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), the Rec. 601 weighted sum of the channels."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def box_blur(t: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)-square box, edges replicated (so a border pixel's mean is not darkened); as a
    row pass and a column pass (2(2r+1) additions a pixel instead of (2r+1)^2)."""
    k = 2 * radius + 1
    t = F.avg_pool2d(F.pad(t, (radius, radius, 0, 0), mode="replicate"), (1, k), stride=1)
    return F.avg_pool2d(F.pad(t, (0, 0, radius, radius), mode="replicate"), (k, 1), stride=1)


def exposure_gain(photo: torch.Tensor, enhanced: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 1, H, W): how much ``enhanced`` brightened each neighbourhood of ``photo``, the ratio of their
    local mean luminances. Taken over a box, not per pixel, so the photo's detail and noise pass through
    it unchanged rather than being divided out (the floor keeps black areas finite)."""
    return box_blur(luminance(enhanced), radius) / box_blur(luminance(photo), radius).clamp_min(1e-3)


def highlight_shoulder(t: torch.Tensor, photo_max: torch.Tensor, knee: float, ceiling: float) -> torch.Tensor:
    """Compress brightened pixels towards ``ceiling`` instead of clipping them at white.

    ``t`` (B, 3, H, W) is the brightened image, unclamped; ``photo_max`` (B, 1, H, W) each photo
    pixel's largest channel. A pixel's largest channel ``m`` stays as it is up to the knee
    ``k = max(knee, photo_max)``; above it, ``k + (c - k)(1 - exp(-(m - k) / (c - k)))`` with
    ``c = max(ceiling, photo_max)``: continuous, increasing, with slope 1 at the knee, and below ``c``
    for every ``m``, so differences between bright values survive as smaller ones. All three channels
    are scaled alike, so the hue is kept. A pixel never ends darker than it was in the photo.
    """
    m = t.amax(dim=1, keepdim=True).clamp_min(1e-6)
    k = photo_max.clamp_min(knee)
    c = photo_max.clamp_min(ceiling)
    span = (c - k).clamp_min(1e-6)
    over = (m - k).clamp_min(0.0)
    shaped = torch.where(m <= k, m, k + (c - k) * (1.0 - torch.exp(-over / span)))
    return t * (shaped / m)


def transfer_exposure(photo: torch.Tensor, enhanced: torch.Tensor, radius: int, blend: tuple[float, float],
                      shoulder: tuple[float, float]) -> torch.Tensor:
    """The photo brightened by the network's local gain (``exposure_gain``), blended into the network's
    own image where the gain is between ``blend[0]`` and ``blend[1]`` (above: all network), then
    ``highlight_shoulder``; clamped to [0, 1]. ``photo`` and ``enhanced`` (B, 3, H, W) in [0, 1]."""
    gain = exposure_gain(photo, enhanced, radius)
    lo, hi = blend
    a = ((gain - lo) / (hi - lo)).clamp(0.0, 1.0)
    t = a * enhanced + (1.0 - a) * photo * gain
    return highlight_shoulder(t, photo.amax(dim=1, keepdim=True), *shoulder).clamp(0.0, 1.0)


# -- local branch -----------------------------------------------------------------------------------


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution as one matrix product over the pixels: on a CPU, PyTorch sends these narrow
    1x1 convolutions to its slow im2col path, which took over half of IAT's time."""
    b, c, h, w = x.shape
    # bmm with the weight expanded: matmul(2-D, 3-D) would transpose-copy the activations twice
    y = torch.bmm(weight.reshape(1, -1, c).expand(b, -1, -1), x.reshape(b, c, h * w))
    if bias is not None:
        y = y.add_(bias[:, None]) if not torch.is_grad_enabled() else y + bias[:, None]
    return y.reshape(b, -1, h, w)


class _ChannelAffine(nn.Module):
    """Upstream's ``Aff_channel`` (channel-first): mix channels by ``color``, then scale and shift each."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))
        self.color = nn.Parameter(torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _pointwise(x, self.color)
        alpha, beta = self.alpha.reshape(1, -1, 1, 1), self.beta.reshape(1, -1, 1, 1)
        if not torch.is_grad_enabled():
            return y.mul_(alpha).add_(beta)
        return y * alpha + beta


class _ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(_pointwise(x, self.fc1.weight, self.fc1.bias))
        return _pointwise(h, self.fc2.weight, self.fc2.bias)


class _ConvBlock(nn.Module):
    """Upstream's ``CBlock_ln``: depthwise positional conv, a 1x1-dw5x5-1x1 mixer and a 1x1 MLP, each
    after an affine channel norm, the two residuals scaled by learnt per-channel ``gamma_1``/``gamma_2``."""

    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = _ChannelAffine(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = _ChannelAffine(dim)
        self.mlp = _ConvMlp(dim, dim * mlp_ratio)
        self.gamma_1 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-4))
        self.gamma_2 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: each temporary is freed or reused at once
            x = self.pos_embed(x).add_(x)  # a new tensor: the caller's x (the skip input) stays intact
            x.add_(self._mix(self.norm1(x)).mul_(self.gamma_1))
            return x.add_(self.mlp(self.norm2(x)).mul_(self.gamma_2))
        x = x + self.pos_embed(x)
        x = x + self.gamma_1 * self._mix(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """1x1, depthwise 5x5, 1x1 (upstream's ``conv2(attn(conv1(x)))``)."""
        x = self.attn(_pointwise(x, self.conv1.weight, self.conv1.bias))
        return _pointwise(x, self.conv2.weight, self.conv2.bias)


class _LocalBranch(nn.Module):
    """Upstream's ``Local_pred_S``: per-pixel ``mul`` >= 0 and ``add`` in (-1, 1)."""

    def __init__(self, cfg: IATConfig) -> None:
        super().__init__()
        w = cfg.local_width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1)
        self.mul_blocks = nn.Sequential(*(_ConvBlock(w, cfg.mlp_ratio) for _ in range(cfg.local_blocks)))
        self.add_blocks = nn.Sequential(*(_ConvBlock(w, cfg.mlp_ratio) for _ in range(cfg.local_blocks)))
        # one-element Sequentials keep upstream's ``mul_end.0`` / ``add_end.0`` keys
        self.mul_end = nn.Sequential(nn.Conv2d(w, 3, 3, 1, 1))
        self.add_end = nn.Sequential(nn.Conv2d(w, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.leaky_relu(self.conv1(x), 0.2)
        mul = F.relu(self.mul_end(self.mul_blocks(f) + f))
        add = torch.tanh(self.add_end(self.add_blocks(f) + f))
        return mul, add


# -- global branch ----------------------------------------------------------------------------------


class _ConvEmbedding(nn.Module):
    """Two stride-2 3x3 convolutions with BatchNorm (and GELU between): tokens at 1/4 resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(3, dim // 2, 3, 2, 1),
            nn.BatchNorm2d(dim // 2),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _QueryAttention(nn.Module):
    """``QUERIES`` learnt queries attend over the image tokens (multi-head, scale ``head_dim ** -0.5``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Parameter(torch.ones(1, QUERIES, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def logits_and_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) tokens -> the queries' scaled logits (B, heads, QUERIES, N) and values (B, heads, N, d)."""
        b, n, c = tokens.shape
        h, d = self.heads, c // self.heads
        k = self.k(tokens).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(tokens).reshape(b, n, h, d).transpose(1, 2)
        q = self.q.expand(b, -1, -1).reshape(b, QUERIES, h, d).transpose(1, 2)
        return (q @ k.transpose(-2, -1)) * d**-0.5, v

    def project(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, heads, QUERIES, d) attention-weighted values -> (B, QUERIES, C)."""
        b, h, q, d = attended.shape
        return self.proj(attended.transpose(1, 2).reshape(b, q, h * d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, v = self.logits_and_values(tokens)
        return self.project(logits.softmax(dim=-1) @ v)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _QueryBlock(nn.Module):
    """Upstream's ``query_SABlock``. The attention has no residual: its QUERIES outputs replace the
    image's tokens, so the block maps (B, C, h, w) features to (B, QUERIES, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _QueryAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, dim * mlp_ratio)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, h*w, C) normalised tokens with the positional term."""
        x = x + self.pos_embed(x)
        return self.norm1(x.flatten(2).transpose(1, 2))

    def finish(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.mlp(self.norm2(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.attn(self.tokens(x)))


class _GlobalBranch(nn.Module):
    """Upstream's ``Global_pred``: ``gamma`` (B, 1) and the colour matrix (B, 3, 3), each a learnt
    correction of a base (1 and the identity)."""

    def __init__(self, cfg: IATConfig) -> None:
        super().__init__()
        dim = cfg.global_width
        self.gamma_base = nn.Parameter(torch.ones(1))
        self.color_base = nn.Parameter(torch.eye(3))
        self.conv_large = _ConvEmbedding(dim)
        self.generator = _QueryBlock(dim, cfg.global_heads, cfg.mlp_ratio)
        self.gamma_linear = nn.Linear(dim, 1)
        self.color_linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.generator(self.conv_large(x)))

    def outputs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries' outputs (B, QUERIES, C) -> ``gamma`` (B, 1) and the colour matrix (B, 3, 3)."""
        gamma = self.gamma_linear(t[:, 0]) + self.gamma_base
        color = self.color_linear(t[:, 1:]).reshape(-1, 3, 3) + self.color_base
        return gamma, color

    def forward_in_strips(self, x: torch.Tensor, strip_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on a large image with memory bounded by ``strip_pixels``, equal up to float rounding.

        The embedding (two stride-2 3x3 convolutions) and the positional 3x3 convolution are local, so
        each strip of token rows is computed from a strip of input rows starting on the 4-row grid,
        with two extra token rows at each inner edge: the first is wrong (the strip's zero padding
        stands in for a real row), the second is what the positional convolution of a kept row reads.
        The attention of the ten queries over all tokens is a softmax over the tokens, accumulated
        strip by strip with a running maximum (the log-sum-exp trick), so no token is kept.
        """
        height, width = x.shape[-2:]
        rows = -(-(-(-height // 2)) // 2)  # token rows: ceil(ceil(H / 2) / 2)
        step = max(4, strip_pixels // (4 * width))  # token rows per strip (4 input rows each)
        halo = 2
        attn = self.generator.attn
        top = acc = norm = None
        for t0 in range(0, rows, step):
            t1 = min(rows, t0 + step)
            e0, e1 = max(0, t0 - halo), min(rows, t1 + halo)
            feats = self.conv_large(x[..., 4 * e0 : min(height, 4 * e1), :])
            tokens = self.generator.tokens(feats)[:, (t0 - e0) * feats.shape[-1] : (t1 - e0) * feats.shape[-1]]
            logits, v = attn.logits_and_values(tokens)
            peak = logits.amax(dim=-1, keepdim=True)
            if top is None:
                top = peak
                weights = (logits - top).exp()
                acc, norm = weights @ v, weights.sum(dim=-1, keepdim=True)
            else:
                new_top = torch.maximum(top, peak)
                rescale = (top - new_top).exp()
                weights = (logits - new_top).exp()
                acc = acc * rescale + weights @ v
                norm = norm * rescale + weights.sum(dim=-1, keepdim=True)
                top = new_top
        return self.outputs(self.generator.finish(attn.project(acc / norm)))


# -- the model --------------------------------------------------------------------------------------


class IATOutputs(NamedTuple):
    mul: torch.Tensor  # (B, 3, H, W)
    add: torch.Tensor  # (B, 3, H, W)
    gamma: torch.Tensor  # (B, 1)
    color: torch.Tensor  # (B, 3, 3)
    enhanced: torch.Tensor  # (B, 3, H, W), not clamped to [0, 1] (gamma < 0 would exceed 1; the runner clamps)


class IAT(nn.Module):
    """``forward`` returns the enhanced image; ``forward_all`` every intermediate upstream returns."""

    def __init__(self, config: IATConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or IATConfig()
        self.local_net = _LocalBranch(cfg)
        self.global_net = _GlobalBranch(cfg)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the branches see: ``x`` in [0, 1], or ``(x - 0.5) / 0.5`` for the LOL-v2 weights."""
        return (x - 0.5) / 0.5 if self.config.normalize_input else x

    def forward_all(self, x: torch.Tensor) -> IATOutputs:
        x = self.network_input(x)
        mul, add = self.local_net(x)
        gamma, color = self.global_net(x)
        # two float32 ops, not fused: upstream's rounding
        return IATOutputs(mul, add, gamma, color, apply_color_and_gamma(x.mul(mul).add(add), color, gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if torch.is_grad_enabled() or h * w <= STRIP_PIXELS:
            y = self.forward_all(x).enhanced
        else:
            y = self._forward_in_strips(self.network_input(x))
        cfg = self.config
        if not cfg.exposure_transfer:
            return y
        return transfer_exposure(x, y.clamp(0.0, 1.0), cfg.transfer_radius, cfg.transfer_blend, cfg.shoulder)

    def _forward_in_strips(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on a large image: both branches strip by strip (see ``forward_in_strips``).

        Each strip of rows runs with ``local_margin`` extra rows above and below (where the image has
        them), so its kept rows see exactly the pixels they see in the whole image: the result equals
        the untiled one up to float rounding, while the local activations stay ~STRIP_PIXELS in size.
        """
        gamma, color = self.global_net.forward_in_strips(x, STRIP_PIXELS)
        h, w = x.shape[-2:]
        margin = self.config.local_margin
        rows = max(STRIP_PIXELS // w, 2 * margin)  # a strip at least as tall as its two halos
        out = torch.empty_like(x)
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            a, b = max(0, y0 - margin), min(h, y1 + margin)
            part = x[..., a:b, :]
            mul, add = self.local_net(part)
            local = part.mul(mul).add_(add)[..., y0 - a : y1 - a, :]
            out[..., y0:y1, :] = apply_color_and_gamma(local, color, gamma)
        return out


SPEC = register_family(
    FamilySpec(
        name="iat",
        config_cls=IATConfig,
        model_cls=IAT,
        description="IAT (BMVC'22): local mul/add maps, then a global colour matrix and gamma per image",
        signature_keys=frozenset({"local_net.conv1.weight", "global_net.generator.attn.q", "global_net.color_base"}),
        # Not tileable: gamma and the colour matrix come from attention over the whole image, so a
        # tile would compute its own (a visibly different exposure per tile). It always runs whole;
        # its own strips (above) bound its memory instead. The local receptive radius is 11 px.
        tileable=False,
        tile_exact=False,
        # whole-image part (informative: a family that is never tiled is not planned): with both
        # branches in strips, the output and its clamped copy, ~30 B/px; 100-116 B/px were measured
        # (peak RSS, 2-4 MP) when the global branch ran whole. The strips are the fixed part, ~960 B/px
        # of a strip. `lle enhance` of a 24 MP photo: 2,507 MiB whole process (bench/tiling.py; 4 GB
        # before the global branch ran in strips).
        # the photo stage adds ~12 float32 maps per pixel (gain, blend, shoulder: 48 B/px)
        activation_bytes=lambda c: 40.0 + (48.0 if c.exposure_transfer else 0.0),
        workspace_mb=lambda c: 1000.0 * STRIP_PIXELS / 2**20,
    ),
)
