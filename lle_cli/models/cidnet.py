"""HVI-CIDNet (Yan, Feng, Zhang et al., CVPR 2025: "HVI: A New Color Space for Low-light Image Enhancement").

The network does not enhance RGB: it works in the authors' **HVI** colour space (paper, Sec. 3), built
from HSV with a "collapse" of the dark colours:

* intensity ``I = max(R, G, B)``, and HSV's hue ``h`` (in turns, [0, 1)) and saturation
  ``S = (I - min(R, G, B)) / I``;
* ``C_k = (sin(pi I / 2) + eps) ** k``: a learnt density ``k`` (``trans.density_k``; upstream's comment
  says it is the reciprocal of the paper's k) shrinks the colour plane towards the black point, where
  hue is meaningless and noise lives;
* ``H = C_k S cos(2 pi h)``, ``V = C_k S sin(2 pi h)``: a polarised hue/saturation plane.

``rgb_to_hvi`` and ``hvi_to_rgb`` below are these maps and their inverse (the paper's "perceptual-inverse
HVI transform", upstream's ``PHVIT``): clamp ``H, V`` to [-1, 1] and ``I`` to [0, 1], divide by
``C_k(I) + eps``, clamp again, hue ``atan2(V + eps, H + eps)``, saturation ``sqrt(H^2 + V^2 + eps)``
times ``alpha_s``, clamped to [0, 1], then the ordinary HSV -> RGB sectors, times ``alpha_i``.

CIDNet itself (upstream's net/CIDNet.py) is a two-branch U-Net over the HVI image: an **I branch** (the
intensity, 1 channel) and an **HV branch** (all three HVI channels in, the H and V corrections out),
each with three 3x3-convolution + bilinear down-samplings and three up-samplings with skip
connections. At every level the branches exchange information through "lighten cross-attention"
blocks (LCA): a Restormer-style attention across channels (queries from one branch, keys and values
from the other, L2-normalised over all pixels, a learnt temperature per head) and a gated depthwise
feed-forward (IEL: two tanh-residual depthwise branches multiplied). The network's output is added
to the HVI input (a residual in HVI), and the sum is mapped back to RGB.

Quirks of the authors' code, kept because the released weights were trained with them:

* the resampling is ``nn.UpsamplingBilinear2d``, i.e. **align_corners=True**, and the skips are
  concatenated at the same size, so H and W must be multiples of 8. The authors' test scripts for
  arbitrary sizes (eval.py's SICE/unpaired path, eval_hf.py, app.py) reflect-pad the bottom and right
  to the next multiple of 8 and crop the output; ``CIDNet.forward`` does the same itself (the runner's
  centred padding would give a different result), so the family's ``multiple_of`` is 1;
* at the second level the LCA outputs feed only the skip connections: the next down-sampling takes
  the features from before the LCA;
* the decoder's fifth I-branch LCA (``I_LCA5``) is computed upstream but its output is overwritten
  before use: it never affects the result. Its weights are kept (the checkpoints have them) but it
  is not run, and its parameters are frozen (they have no gradient);
* the HV-branch LCA has no residual around its feed-forward (the I-branch one has);
* the inverse transform's ``eps`` in ``atan2`` and ``sqrt`` gives greys a hue of 1/8 and a
  saturation of 1e-4: a colour round trip is exact only to ~1e-4.

Test-time options (eval.py): LOL-v1 runs with ``gated`` (saturation times ``alpha_s = 1.3``), LOL-v2-real
with ``gated2`` (RGB times ``alpha_i``, 0.8/0.82/0.84 per checkpoint), the others with neither; the
unpaired script and the demo also raise the input to a power ``gamma`` first. They are the config's
``alpha_s``, ``alpha_i`` and ``gamma`` (defaults: the LOL-v1 models as eval.py runs them).

The channel attention sums over all pixels at every level, and the align_corners resampling depends on
the image's size: every output pixel depends on the whole image, so the family is never tiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["CIDNetConfig", "CIDNet", "rgb_to_hvi", "hvi_to_rgb", "PAD_MULTIPLE", "EPS"]

PAD_MULTIPLE = 8  # three 2x down-samplings, concatenated with their skips at the same size
EPS = 1e-8  # upstream's eps in both colour transforms
# upstream's literal (a float64 Python constant; the products below keep its evaluation order, so the
# float32 results are bit-identical to the authors' transform)
_PI = 3.141592653589793
_IEL_EXPANSION = 2.66  # upstream's ffn_expansion_factor: hidden = int(dim * 2.66)
_LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class CIDNetConfig:
    """Architecture and test-time options; the defaults are the released LOL-v1 models (1.98 M
    parameters; hub config.json: channels [36, 36, 72, 144], heads [1, 2, 4, 8], norm false) as
    eval.py --lol runs them."""

    channels: tuple[int, int, int, int] = (36, 36, 72, 144)
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)  # per level; level 0 has no attention (heads[0] unused, as upstream)
    norm: bool = False  # LayerNorm after each down/up-sampling (no released model uses it)
    # the inverse transform's saturation gain (upstream ``trans.alpha_s`` when ``trans.gated``): eval.py
    # --lol sets gated, so the LOL-v1 numbers are at 1.3; 1.0 is "not gated" exactly (s * 1.0 == s)
    alpha_s: float = 1.3
    # the RGB gain (upstream ``trans.alpha`` when ``trans.gated2``): eval.py's LOL-v2-real and unpaired paths
    alpha_i: float = 1.0
    # eval.py/eval_hf.py --gamma: the network sees ``input ** gamma`` (lower is brighter)
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if len(self.channels) != 4 or len(self.heads) != 4:
            raise ValueError(f"channels and heads need 4 values each, got {self.channels} and {self.heads}")
        if any(c < 1 for c in self.channels) or any(h < 1 or c % h for c, h in zip(self.channels, self.heads)):
            raise ValueError(f"each of channels {self.channels} must be a positive multiple of its heads {self.heads}")
        if not (self.alpha_s >= 0 and self.alpha_i > 0 and self.gamma > 0):
            raise ValueError(f"need alpha_s >= 0, alpha_i > 0 and gamma > 0, got {self.alpha_s}, {self.alpha_i}, {self.gamma}")


# -- the HVI colour transform -------------------------------------------------------------------


def rgb_to_hvi(rgb: torch.Tensor, density_k: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) HVI: ``H, V`` in [-1, 1], ``I = max(R, G, B)``.

    ``density_k``: the learnt exponent of ``C_k`` (a 1-element tensor). The operations and their order
    are upstream's ``RGB_HVI.HVIT``, so the float32 result is the same bit for bit.
    """
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    value = rgb.amax(dim=1)
    low = rgb.amin(dim=1)
    spread = value - low + EPS
    # HSV hue in sixths; where two channels tie for the maximum, red wins over green over blue
    hue = torch.where(
        r == value,
        ((g - b) / spread) % 6,
        torch.where(g == value, 2.0 + (b - r) / spread, 4.0 + (r - g) / spread),
    )
    hue = torch.where(low == value, torch.zeros_like(hue), hue) / 6.0
    saturation = (value - low) / (value + EPS)
    saturation = torch.where(value == 0, torch.zeros_like(saturation), saturation)
    hue, saturation, value = hue.unsqueeze(1), saturation.unsqueeze(1), value.unsqueeze(1)
    collapse = ((value * 0.5 * _PI).sin() + EPS).pow(density_k)  # C_k
    angle = 2.0 * _PI * hue
    return torch.cat([collapse * saturation * angle.cos(), collapse * saturation * angle.sin(), value], dim=1)


def hvi_to_rgb(hvi: torch.Tensor, density_k: torch.Tensor, alpha_s: float = 1.0, alpha_i: float = 1.0) -> torch.Tensor:
    """(B, 3, H, W) HVI -> RGB: upstream's ``RGB_HVI.PHVIT`` with ``alpha_s`` (saturation) and
    ``alpha_i`` (RGB) gains; 1.0 leaves each out, as upstream's ``gated``/``gated2`` off do.

    Out-of-range HVI (the network's output) is clamped first, so the result is in [0, alpha_i].
    The hue sectors are selected as upstream does, with the floor of ``6 h``: where float rounding
    makes it 6 (``h`` a hair under 1) upstream leaves the pixel black, and so does this.
    """
    big_h = hvi[:, 0].clamp(-1, 1)
    big_v = hvi[:, 1].clamp(-1, 1)
    value = hvi[:, 2].clamp(0, 1)
    collapse = ((value * 0.5 * _PI).sin() + EPS).pow(density_k.reshape(()))
    big_h = (big_h / (collapse + EPS)).clamp(-1, 1)
    big_v = (big_v / (collapse + EPS)).clamp(-1, 1)
    hue = torch.atan2(big_v + EPS, big_h + EPS) / (2 * _PI)
    hue = hue % 1
    saturation = torch.sqrt(big_h**2 + big_v**2 + EPS)
    if alpha_s != 1.0:
        saturation = saturation * alpha_s
    saturation = saturation.clamp(0, 1)
    value = value.clamp(0, 1)
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - (frac * saturation))
    t = value * (1.0 - ((1.0 - frac) * saturation))
    zero = torch.zeros_like(value)

    def pick(*per_sector: torch.Tensor) -> torch.Tensor:
        out = zero
        for k in range(5, -1, -1):  # sectors 0..5; anything else (6 from rounding) stays 0
            out = torch.where(sector == k, per_sector[k], out)
        return out

    rgb = torch.stack([pick(value, q, p, p, t, value), pick(t, value, value, q, p, p), pick(p, p, t, value, value, q)], dim=1)
    return rgb * alpha_i if alpha_i != 1.0 else rgb


class _HVITransform(nn.Module):
    """Holds the learnt density ``k`` (upstream's ``trans`` / ``RGB_HVI``, key ``trans.density_k``)."""

    def __init__(self) -> None:
        super().__init__()
        self.density_k = nn.Parameter(torch.full([1], 0.2))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb_to_hvi(rgb, self.density_k)

    def inverse(self, hvi: torch.Tensor, alpha_s: float = 1.0, alpha_i: float = 1.0) -> torch.Tensor:
        # upstream reads k as a Python float here (``k.item()``): no gradient reaches k through the inverse
        return hvi_to_rgb(hvi, self.density_k.detach(), alpha_s, alpha_i)


# -- building blocks ----------------------------------------------------------------------------


class _LayerNorm2d(nn.Module):
    """Upstream's ``LayerNorm(data_format="channels_first")``: normalise over channels at each pixel,
    with its own arithmetic (mean, biased variance, ``/ sqrt(var + 1e-6)``) so the rounding is upstream's."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (centred / torch.sqrt(var + _LAYER_NORM_EPS)) + self.bias[:, None, None]


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``nn.UpsamplingBilinear2d``: bilinear with align_corners=True (corner pixels map onto corners)."""
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)


class _Down(nn.Module):
    """Upstream's ``NormDownsample``: 3x3 conv, bilinear to half size, PReLU (one slope), optional norm."""

    def __init__(self, cin: int, cout: int, use_norm: bool) -> None:
        super().__init__()
        self.prelu = nn.PReLU()
        # a one-element Sequential keeps upstream's ``down.0.weight`` (its ``down.1`` is the resampler)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
        self.norm = _LayerNorm2d(cout) if use_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.prelu(_resize(self.down(x), h // 2, w // 2))  # the full-size conv output is freed first
        return self.norm(x) if self.norm is not None else x


class _Up(nn.Module):
    """Upstream's ``NormUpsample``: 3x3 conv, bilinear to twice the size, concatenate the skip, 1x1
    conv, PReLU, optional norm."""

    def __init__(self, cin: int, cout: int, use_norm: bool) -> None:
        super().__init__()
        self.prelu = nn.PReLU()
        self.up_scale = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
        self.up = nn.Conv2d(2 * cout, cout, 1, bias=False)
        self.norm = _LayerNorm2d(cout) if use_norm else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up_scale(x)
        x = _resize(x, 2 * x.shape[-2], 2 * x.shape[-1])
        if torch.is_grad_enabled():
            x = self.up(torch.cat([x, skip], dim=1))
        else:  # inference: the 1x1 conv of the concatenation as two convs summed, without the copy
            c = x.shape[1]
            y = F.conv2d(x, self.up.weight[:, :c])
            del x
            x = y.add_(F.conv2d(skip, self.up.weight[:, c:]))
        x = self.prelu(x)
        return self.norm(x) if self.norm is not None else x


class _CrossAttention(nn.Module):
    """Upstream's ``CAB``: queries from ``x``, keys and values from ``y`` (1x1 then depthwise 3x3
    convs), attention between *channels* within each head, each channel's map L2-normalised over all
    pixels, logits scaled by a learnt temperature per head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.kv = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_dwconv(self.q(x)).reshape(b, self.heads, c // self.heads, h * w)
        k, v = self.kv_dwconv(self.kv(y)).reshape(b, 2, self.heads, c // self.heads, h * w).unbind(1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)  # (b, heads, c/h, c/h)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class _GatedFeedForward(nn.Module):
    """Upstream's ``IEL``: 1x1 up to 2 x hidden, depthwise 3x3, split; each half ``tanh(dw3x3(x)) + x``;
    their product; 1x1 back."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(dim * _IEL_EXPANSION)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden, bias=False)
        self.dwconv1 = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.dwconv2 = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.project_out(self._half(x, 0).mul_(self._half(x, 1)))
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out((torch.tanh(self.dwconv1(x1)) + x1) * (torch.tanh(self.dwconv2(x2)) + x2))

    def _half(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Inference: ``tanh(dw(x_k)) + x_k`` for one half, from that half's slice of ``project_in`` and
        ``dwconv`` (both act per output channel), so the 2 x hidden channels never exist at once: the
        level-1 feed-forward was the network's memory peak."""
        n = self.dwconv1.in_channels
        y = F.conv2d(x, self.project_in.weight[k * n : (k + 1) * n])
        y = F.conv2d(y, self.dwconv.weight[k * n : (k + 1) * n], padding=1, groups=n)
        return torch.tanh_((self.dwconv1, self.dwconv2)[k](y)).add_(y)


class _LCA(nn.Module):
    """Lighten cross-attention: ``x + attention(norm x, norm y)``, then the feed-forward of its norm,
    with a residual in the I branch (upstream's ``I_LCA``) and without in the HV branch (``HV_LCA``)."""

    def __init__(self, dim: int, heads: int, residual_ffn: bool) -> None:
        super().__init__()
        self.gdfn = _GatedFeedForward(dim)
        self.norm = _LayerNorm2d(dim)
        self.ffn = _CrossAttention(dim, heads)
        self.residual_ffn = residual_ffn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.ffn(self.norm(x), self.norm(y))
        out = self.gdfn(self.norm(x))
        return x + out if self.residual_ffn else out


def _stem(cin: int, cout: int) -> nn.Sequential:
    """Replication-pad by 1, then a 3x3 conv without bias (upstream's ``*_block0``, keys ``.1.weight``)."""
    return nn.Sequential(nn.ReplicationPad2d(1), nn.Conv2d(cin, cout, 3, 1, 0, bias=False))


# -- the network --------------------------------------------------------------------------------


class CIDNet(nn.Module):
    """RGB in [0, 1] -> enhanced RGB (unclamped; in [0, alpha_i]); any size (see the module docstring).

    Attribute names are upstream's, so the authors' state dicts (hub ``model.safetensors``) load as
    they are.
    """

    def __init__(self, config: CIDNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CIDNetConfig()
        c1, c2, c3, c4 = cfg.channels
        _, h2, h3, h4 = cfg.heads
        n = cfg.norm
        # HV branch
        self.HVE_block0 = _stem(3, c1)
        self.HVE_block1 = _Down(c1, c2, n)
        self.HVE_block2 = _Down(c2, c3, n)
        self.HVE_block3 = _Down(c3, c4, n)
        self.HVD_block3 = _Up(c4, c3, n)
        self.HVD_block2 = _Up(c3, c2, n)
        self.HVD_block1 = _Up(c2, c1, n)
        self.HVD_block0 = _stem(c1, 2)
        # I branch
        self.IE_block0 = _stem(1, c1)
        self.IE_block1 = _Down(c1, c2, n)
        self.IE_block2 = _Down(c2, c3, n)
        self.IE_block3 = _Down(c3, c4, n)
        self.ID_block3 = _Up(c4, c3, n)
        self.ID_block2 = _Up(c3, c2, n)
        self.ID_block1 = _Up(c2, c1, n)
        self.ID_block0 = _stem(c1, 1)
        # cross-attention between the branches, encoder levels 1-3 then decoder levels 3-1
        for k, (dim, heads) in enumerate([(c2, h2), (c3, h3), (c4, h4), (c4, h4), (c3, h3), (c2, h2)], start=1):
            setattr(self, f"HV_LCA{k}", _LCA(dim, heads, residual_ffn=False))
            setattr(self, f"I_LCA{k}", _LCA(dim, heads, residual_ffn=True))
        # upstream computes I_LCA5 and then overwrites its output: it never reaches the result
        self.I_LCA5.requires_grad_(False)
        self.trans = _HVITransform()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = _pad_to_multiple(x, PAD_MULTIPLE)
        if self.config.gamma != 1.0:
            x = x**self.config.gamma
        hvi = self.trans(x)
        out = self.correction(hvi)
        out = out.add_(hvi) if not torch.is_grad_enabled() else out + hvi
        del hvi
        rgb = self.trans.inverse(out, self.config.alpha_s, self.config.alpha_i)
        if torch.compiler.is_exporting():
            # the same crop as a gather: a slice makes torch.export demand a proof that h <= the padded
            # size, which its symbolic shapes cannot give for 8 * ceil(h / 8)
            return rgb.index_select(-2, torch.arange(h, device=rgb.device)).index_select(-1, torch.arange(w, device=rgb.device))
        return rgb[..., :h, :w]

    def correction(self, hvi: torch.Tensor) -> torch.Tensor:
        """The network proper: (B, 3, H, W) HVI, H and W multiples of 8 -> the HVI residual (H, V, I)."""
        keep = torch.is_grad_enabled()
        i = hvi[:, 2:3]
        # inference drops the full-resolution skips at once and recomputes them at the end (two
        # small convolutions): holding them was a third of the peak memory
        i_skip0 = self.IE_block0(i)
        i1 = self.IE_block1(i_skip0)
        i_skip0 = i_skip0 if keep else None
        hv_skip0 = self.HVE_block0(hvi)
        hv1 = self.HVE_block1(hv_skip0)
        hv_skip0 = hv_skip0 if keep else None
        # level 1: the LCA outputs go both down and to the skips
        i_skip1 = self.I_LCA1(i1, hv1)
        hv_skip1 = self.HV_LCA1(hv1, i1)
        del i1, hv1
        i2 = self.IE_block2(i_skip1)
        hv2 = self.HVE_block2(hv_skip1)
        # level 2: the LCA outputs go to the skips only; the down-sampling takes i2, hv2 (upstream)
        i_skip2 = self.I_LCA2(i2, hv2)
        hv_skip2 = self.HV_LCA2(hv2, i2)
        i3 = self.IE_block3(i2)
        hv3 = self.HVE_block3(hv2)
        del i2, hv2
        # bottleneck
        i4 = self.I_LCA3(i3, hv3)
        hv4 = self.HV_LCA3(hv3, i3)
        del i3, hv3
        i_dec = self.I_LCA4(i4, hv4)
        hv_dec = self.HV_LCA4(hv4, i4)
        del i4, hv4
        # decoder; upstream's I_LCA5(i_dec, hv_dec) would be here, its output unused
        hv_dec = self.HVD_block3(hv_dec, hv_skip2)
        i_dec = self.ID_block3(i_dec, i_skip2)
        del hv_skip2, i_skip2
        hv_dec = self.HV_LCA5(hv_dec, i_dec)
        hv_dec = self.HVD_block2(hv_dec, hv_skip1)
        i_dec = self.ID_block2(i_dec, i_skip1)
        del hv_skip1, i_skip1
        i_next = self.I_LCA6(i_dec, hv_dec)
        hv_dec = self.HV_LCA6(hv_dec, i_dec)
        del i_dec
        # one branch's full-resolution skip at a time
        i_out = self.ID_block0(self.ID_block1(i_next, i_skip0 if keep else self.IE_block0(i)))
        del i_next, i_skip0
        hv_out = self.HVD_block0(self.HVD_block1(hv_dec, hv_skip0 if keep else self.HVE_block0(hvi)))
        return torch.cat([hv_out, i_out], dim=1)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Extend the bottom and right to the next multiples of ``multiple`` by reflection (the edge row
    not repeated), as the authors' scripts do with ``F.pad(..., 'reflect')``; nothing when already a
    multiple. Written as a gather of rows and columns so that ``torch.export`` sees sizes it can reason
    about (``multiple * ceil(h / multiple)``) and no branch on the image's size. Where the reflection
    would run past the first row (images of 4 px or less, which upstream cannot pad), row 0 repeats."""
    for dim in (-2, -1):
        n = x.shape[dim]
        target = (n + multiple - 1) // multiple * multiple
        idx = torch.arange(target, device=x.device)
        idx = torch.where(idx < n, idx, 2 * (n - 1) - idx).clamp_(min=0)
        x = x.index_select(dim, idx)
    return x


SPEC = register_family(
    FamilySpec(
        name="cidnet",
        config_cls=CIDNetConfig,
        model_cls=CIDNet,
        description="HVI-CIDNet (CVPR'25): two-branch cross-attention U-Net in the HVI colour space",
        signature_keys=frozenset({"trans.density_k", "HV_LCA1.ffn.temperature", "IE_block0.1.weight", "HVD_block0.1.weight"}),
        # multiple_of stays 1: the model pads bottom/right itself (see _pad_to_multiple); the runner's
        # centred padding would change the result. min_size 9: the runner pads (centred) anything
        # smaller first, so the reflection is always valid and the innermost level (1/8) has at least
        # 2 px; at 1 px align_corners resampling takes another branch, which an exported graph with
        # dynamic H and W cannot hold (torch.export demands H, W >= 9). The module itself takes any size.
        min_size=PAD_MULTIPLE + 1,
        # not tileable: the channel attention normalises and sums over all pixels at every level and
        # the align_corners resampling depends on the image's size, so a tile computes other values
        tileable=False,
        tile_exact=False,
        # informative (a family that is never tiled is not planned): peak RSS of an inference pass over
        # what the process held before it, 741 B/px at 1 MP and 642 at 2.2 MP (channels-last, 2 threads);
        # 1.4 KB/px before the full-size skips were recomputed and the feed-forward split in halves
        activation_bytes=lambda c: 750.0,
        # oneDNN's depthwise and 1x1 convolutions: 3.5 s instead of 7.8 s of a 512x512 pass's 8-12 s
        channels_last=True,
    ),
)
