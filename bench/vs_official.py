"""Whole-process time per image of ``lle enhance`` against the official code path, on the CPU.

    python bench/vs_official.py [--repeats N] [--sizes WxH,...] [--families F ...] [--threads T] [--json PATH]

For each family and size, one real photo from ``../shared/data`` is resized with PIL, written as a
PNG, and enhanced end to end (read the file, run the network, write an 8-bit PNG) by two sides:

* **official**: the way the upstream test script does it, on the CPU in float32. The official code
  is not a dependency: this script holds its own plain re-implementation of each network (written
  here, with the upstream parameter names so the authors' checkpoints load unchanged; NCHW, no
  fusion, no layout or in-place tricks beyond upstream's own) and checks it against the golden
  fixtures made with the official code (``../shared/golden``), which shows it is the same computation.

  - ``illumination_unet``: RAVE ``inference.py`` with ``rave_unpaired.pth``: PIL + ``ToTensor``,
    the UNet once loaded, ``torchvision.utils.save_image``;
  - ``zero_dce``: SCL-LLE ``lowlight_test.py`` with ``scl_lle.pth``: ``np.asarray(img) / 255`` (its
    permuted tensor happens to be NHWC in memory, so oneDNN runs it channels-last), the network built
    and its checkpoint loaded again for every image, ``save_image``;
  - ``llflow``: LLFlow ``test_unpaired.py`` (``get_sr`` at heat 0) with the ``mid`` random weights of
    the golden fixtures (LOL-pc.yml with nb 8, K 2; the only official-format LLFlow weights here):
    8-bit RGB read, ``auto_padding`` (16-px symmetric mirror, always at least 1 px), per-channel
    histogram equalisation (OpenCV's ``equalizeHist``, re-implemented in numpy: OpenCV is not a
    dependency), ``log`` input + histeq, the ConEncoder1 (RRDB trunk, stacked block outputs
    concatenated onto every pyramid level, colour map), the flow's reverse pass from
    ``z = squeeze2d(color_map, 8)``, clamp, un-pad, truncation to 8 bits and a PNG written with
    ``cv2.imwrite``'s defaults (zlib level 1, RLE strategy; through Pillow);
* **lle**: ``lle_cli.batch.run_batch`` on one file, the function ``lle enhance FILE`` calls, with the
  model loaded once as ``lle_cli.api.load_model`` does (for LLFlow, the same steps with the mid
  architecture and weights, which are not a registry model). Large images are tiled as
  ``lle enhance`` tiles them by default (LLFlow at 2048x1536). Not counted: the OOD warning
  ``lle enhance`` computes after each LLFlow image when the model ships statistics (the mid weights
  have none; ``-q`` skips it).

Each side runs in its own persistent worker process (``--worker official|lle``; one JSON command a
line on stdin, one JSON reply a line on stdout), so process-wide settings stay apart: the lle worker
calls ``keep_freed_memory()`` as the ``lle`` command does, the official worker is a plain Python
process like the upstream scripts. Both use the same torch thread count (``--threads``, default
torch's choice in this process). Times (wall and process CPU) are taken inside the worker around
the whole per-image work, so neither Python start-up nor the pipe is counted.

Runs are interleaved (official, lle, lle, official, ...) after one warm-up of each, so a machine
shared with other jobs slows both alike; the figure of merit is the ratio of the medians. The
network alone is timed too (fewer runs), and its FLOPs are counted (every convolution, with forward
hooks) to report GFLOP/s and the fraction of the machine's peak (``--peak-gflops``); lle's LLFlow
runs its wide 3x3 convolutions as Winograd transforms, so its figure is direct-equivalent and may
pass 100%. The two sides' PNGs must differ by at most one level; LLFlow's random-weight flow can
amplify float rounding, so for it the difference is recorded rather than enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from bench.enhance import environment, parse_sizes, peak_rss_mib, write_results

SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden"
DEFAULT_JSON = ROOT / "bench" / "results" / "vs_official.json"
DEFAULT_SIZES = "600x400,2048x1536"
GOLDEN_IMAGES = ("backlit_a", "lowlight_a")
LLFLOW_GOLDEN_IMAGES = ("lowlight_a", "lowlight_odd")
LLFLOW_WEIGHTS = GOLDEN / "llflow" / "llflow_mid_random.safetensors"


# ------------------------------------------------------------------------------------------------
# The official computations, written plainly (NCHW, no fusion, no layout tricks), as the upstream
# modules compute them. Only the parameter names follow upstream, so its checkpoints load unchanged.


class _PlainCurveNet(nn.Module):
    """Zero-DCE / SCL-LLE: seven zero-padded 3x3 convs with skip concatenations, then 8 curve steps."""

    def __init__(self) -> None:
        super().__init__()
        c = 32
        for i, (cin, cout) in enumerate([(3, c), (c, c), (c, c), (c, c), (2 * c, c), (2 * c, c), (2 * c, 24)], 1):
            setattr(self, f"e_conv{i}", nn.Conv2d(cin, cout, 3, 1, 1, bias=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = torch.relu(self.e_conv1(x))
        x2 = torch.relu(self.e_conv2(x1))
        x3 = torch.relu(self.e_conv3(x2))
        x4 = torch.relu(self.e_conv4(x3))
        x5 = torch.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = torch.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        half = x
        for k, rk in enumerate(torch.split(r, 3, dim=1)):
            x = x + rk * (torch.pow(x, 2) - x)
            if k == 3:
                half = x
        return half, x, r


class _PlainResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False, padding_mode="reflect")
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)) + x, 0.2)


class _PlainPPM(nn.Module):
    def __init__(self, c: int, red: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c, red, 1, bias=False), nn.PReLU()) for b in bins
        )
        self.fuse = nn.Sequential(nn.Conv2d(c + red * len(bins), c, 3, padding=1, bias=False), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True) for f in self.features]
        return self.fuse(torch.cat([x, *up], 1))


class _PlainIlluminationUNet(nn.Module):
    """CLIP-LIT / RAVE UNet as RAVE's inference builds it (reflect padding on the outer convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond1 = nn.Conv2d(3, 32, 3, 1, 1, bias=True, padding_mode="reflect")
        self.cond_add1 = nn.Conv2d(32, 1, 3, 1, 1, bias=True, padding_mode="reflect")
        self.condx = nn.Conv2d(32, 64, 3, 1, 1, bias=True, padding_mode="reflect")
        self.condy = nn.Conv2d(64, 32, 3, 1, 1, bias=True, padding_mode="reflect")
        for i, c in enumerate((32, 32, 64, 64, 32, 32), 1):
            setattr(self, f"ResidualBlock{i}", _PlainResBlock(c))
        self.PPM1 = _PlainPPM(32, 8, (1, 2, 3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the light map
        h = self.ResidualBlock2(self.ResidualBlock1(F.leaky_relu(self.cond1(x), 0.2)))
        h = self.condx(self.PPM1(h))
        h = self.condy(self.ResidualBlock4(self.ResidualBlock3(h)))
        return torch.relu(self.cond_add1(self.ResidualBlock6(self.ResidualBlock5(h))))


# -- LLFlow (LOL-pc.yml layout: nf 64, gc 32, stackRRDB blocks [1, 3, 5, 7], hidden 64, L 3,
#    two unconditional steps after each squeeze, conditioning width 320, affine eps 1e-4)


def _sum123(x: torch.Tensor) -> torch.Tensor:
    """Upstream ``thops.sum(x, dim=[1, 2, 3])``: one axis at a time, keeping dims, then squeezed."""
    return x.sum(dim=1, keepdim=True).sum(dim=2, keepdim=True).sum(dim=3, keepdim=True).view(x.shape[0])


def _squeeze2d(x: torch.Tensor, f: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).contiguous().view(b, c * f * f, h // f, w // f)


def _unsqueeze2d(x: torch.Tensor, f: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3).contiguous().view(b, c // (f * f), h * f, w * f)


class _PlainDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)  # upstream's own (on fresh conv outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1)) * 0.2 + x


class _PlainRRDB(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = (_PlainDenseBlock(nf, gc) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


def _gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences along H and (through a transpose) W, zeros beyond the border."""

    def along_h(t: torch.Tensor) -> torch.Tensor:
        nxt, prv = torch.zeros_like(t), torch.zeros_like(t)
        nxt[:, :, 0:-1] = t[:, :, 1:]
        prv[:, :, 1:] = t[:, :, 0:-1]
        return 0.5 * (nxt - prv)

    return along_h(x), along_h(torch.transpose(x, 2, 3)).transpose(2, 3)


class _PlainConEncoder(nn.Module):
    """Upstream ``ConEncoder1``, every module it builds (some are never called, but are in the file)."""

    def __init__(self, nf: int = 64, nb: int = 8, gc: int = 32, stack: tuple[int, ...] = (1, 3, 5, 7)) -> None:
        super().__init__()
        self.stack = stack
        self.conv_first = nn.Conv2d(3 + 3 + 6, nf, 3, 1, 1)  # log image, histeq, colour map, noise map
        self.conv_second = nn.Conv2d(nf, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(_PlainRRDB(nf, gc) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.downconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.downconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.downconv3 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.awb_para = nn.Linear(nf, 3)
        self.fine_tune_color_map = nn.Sequential(nn.Conv2d(nf, 3, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = x[:, 0:3].exp() * 1  # upstream multiplies by its (disabled) white-balance weight, 1
        color_map = raw / (raw.sum(dim=1, keepdim=True) + 1e-4)
        dx, dy = _gradient(color_map)
        noise_map = torch.max(torch.stack([dx.abs(), dy.abs()], dim=0), dim=0)[0]
        fea = self.conv_second(self.lrelu(self.conv_first(torch.cat([x, color_map, noise_map], dim=1))))
        fea_head = F.max_pool2d(fea, 2)
        blocks = {}
        fea = fea_head
        for idx, m in enumerate(self.RRDB_trunk.children()):
            fea = m(fea)
            if idx in self.stack:
                blocks[f"block_{idx}"] = fea
        fea_down2 = fea_head + self.trunk_conv(fea)
        half = {"scale_factor": 0.5, "mode": "bilinear", "align_corners": False, "recompute_scale_factor": True}
        fea_down4 = self.downconv1(F.interpolate(fea_down2, **half))
        fea = self.lrelu(fea_down4)  # in place: the returned fea_down4 is the activated one, as upstream
        fea_down8 = self.downconv2(F.interpolate(fea, **half))
        return {
            "fea_up0": fea_down8, "fea_up1": fea_down4, "fea_up2": fea_down2, "fea_up4": fea_head,
            "last_lr_fea": fea_down4,
            "color_map": self.fine_tune_color_map(F.interpolate(fea_down2, scale_factor=2)),
            **blocks,
        }


class _PlainActNorm(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor, logdet: torch.Tensor | None = None, reverse: bool = False):
        if not reverse:
            x = (x + self.bias) * torch.exp(self.logs)
        else:
            x = x * torch.exp(-self.logs)
        if logdet is not None:
            d = self.logs.sum() * (x.shape[2] * x.shape[3])
            logdet = logdet - d if reverse else logdet + d
        if reverse:
            x = x - self.bias
        return x, logdet


class _PlainFlowConv(nn.Conv2d):
    """Upstream ``flow.Conv2d``: a bias-free "same" convolution followed by an ActNorm."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, 1, k // 2, bias=False)
        self.actnorm = _PlainActNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm(super().forward(x))[0]


class _PlainZeroConv(nn.Conv2d):
    """Upstream ``Conv2dZeros``: 3x3 conv with bias, output scaled by exp(3 * logs)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, 1, 1)
        self.logs = nn.Parameter(torch.zeros(cout, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.exp(self.logs * 3)


def _coupling_net(cin: int, cout: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(_PlainFlowConv(cin, hidden, 3), nn.ReLU(), _PlainFlowConv(hidden, hidden, 1), nn.ReLU(),
                         _PlainZeroConv(hidden, cout))


class _PlainCondAffine(nn.Module):
    """Upstream ``CondAffineSeparatedAndCond`` (reverse direction)."""

    def __init__(self, c: int, cond: int = 320, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.n_nn = c // 2
        self.fAffine = _coupling_net(self.n_nn + cond, 2 * (c - self.n_nn))
        self.fFeatures = _coupling_net(cond, 2 * c)

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(h[:, 1::2] + 2.0) + self.eps, h[:, 0::2]  # "cross" split: scale, shift

    def reverse(self, z: torch.Tensor, logdet: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = z[:, : self.n_nn], z[:, self.n_nn :]
        scale, shift = self._params(self.fAffine(torch.cat([z1, ft], dim=1)))
        z2 = z2 / scale
        z2 = z2 - shift
        z = torch.cat((z1, z2), dim=1)
        logdet = logdet - _sum123(torch.log(scale))
        scale_ft, shift_ft = self._params(self.fFeatures(ft))
        z = z / scale_ft
        z = z - shift_ft
        return z, logdet - _sum123(torch.log(scale_ft))


class _PlainInvConv(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(c))

    def reverse(self, z: torch.Tensor, logdet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.weight.shape[0]
        dlogdet = torch.slogdet(self.weight)[1] * (z.shape[2] * z.shape[3])
        w_inv = torch.inverse(self.weight.double()).float().view(c, c, 1, 1)  # every call, as upstream
        return F.conv2d(z, w_inv), logdet - dlogdet


class _PlainFlowStep(nn.Module):
    def __init__(self, c: int, conditional: bool) -> None:
        super().__init__()
        self.actnorm = _PlainActNorm(c)
        self.invconv = _PlainInvConv(c)
        if conditional:
            self.affine = _PlainCondAffine(c)

    def reverse(self, z: torch.Tensor, logdet: torch.Tensor, ft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "affine"):
            z, logdet = self.affine.reverse(z, logdet, ft)
        z, logdet = self.invconv.reverse(z, logdet)
        return self.actnorm(z, logdet, reverse=True)


class _PlainSqueeze(nn.Module):
    pass


_LEVEL_FEATURE = {1: "fea_up2", 2: "fea_up1", 3: "fea_up0"}  # scale 1: the encoder output each level uses


class _PlainFlowUpsampler(nn.Module):
    """Upstream ``FlowUpsamplerNet`` at scale 1 (decode only); ``f`` is built but never called."""

    def __init__(self, K: int = 2, pre_steps: int = 2, cond: int = 320) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.level_of: list[int] = []
        c = 3
        for level in (1, 2, 3):
            c *= 4
            self.layers.append(_PlainSqueeze())
            self.layers.extend(_PlainFlowStep(c, False) for _ in range(pre_steps))
            self.layers.extend(_PlainFlowStep(c, True) for _ in range(K))
            self.level_of += [level] * (1 + pre_steps + K)
        self.f = nn.Sequential(nn.Conv2d(cond, 2 * 3 * 64, 3, 1, 1))

    def decode(self, feats: dict[str, torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(z[:, 0, 0, 0])
        for layer, level in zip(reversed(self.layers), reversed(self.level_of)):
            if isinstance(layer, _PlainSqueeze):
                z = _unsqueeze2d(z, 2)
            else:
                z, logdet = layer.reverse(z, logdet, feats[_LEVEL_FEATURE[level]])
        return z, logdet


class _PlainLLFlow(nn.Module):
    def __init__(self, nb: int = 8, K: int = 2) -> None:
        super().__init__()
        self.RRDB = _PlainConEncoder(nb=nb)
        self.flowUpsamplerNet = _PlainFlowUpsampler(K=K)

    def rrdb_preprocessing(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        res = self.RRDB(lq)
        concat = torch.cat([res[f"block_{i}"] for i in self.RRDB.stack], dim=1)
        for k in ("last_lr_fea", "fea_up1", "fea_up2", "fea_up4", "fea_up0"):  # upstream's list, unused ones too
            res[k] = torch.cat([res[k], F.interpolate(concat, res[k].shape[2:])], dim=1)
        return res

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """``LLFlowModel.get_sr(lq, heat=None)``: the reverse flow from the colour map (z is ignored upstream)."""
        feats = self.rrdb_preprocessing(lq)
        sr, _ = self.flowUpsamplerNet.decode(feats, _squeeze2d(feats["color_map"], 8))
        return sr


def _official_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}  # RAVE saved a DataParallel


def _read_numpy(path: Path) -> torch.Tensor:
    """SCL-LLE ``lowlight_test.py``: float64 ``/ 255``, then a permuted (NHWC-strided) float tensor."""
    arr = np.asarray(Image.open(path)) / 255.0
    return torch.from_numpy(arr).float().permute(2, 0, 1).unsqueeze(0)


def _read_to_tensor(path: Path) -> torch.Tensor:
    """RAVE ``inference.py`` (``create_transform``): torchvision's ``ToTensor``, a contiguous NCHW tensor."""
    from torchvision import transforms

    return transforms.ToTensor()(Image.open(path)).unsqueeze(0)


def _official_write(img: torch.Tensor, path: Path) -> None:
    """Upstream's writer: ``torchvision.utils.save_image`` (Pillow PNG, default compression)."""
    from torchvision.utils import save_image

    save_image(img, str(path))


# -- LLFlow test_unpaired.py, step by step


def _llflow_pad(img: np.ndarray, times: int = 16) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``auto_padding``: 1..16 px per axis (16 when already a multiple), OpenCV BORDER_REFLECT = numpy symmetric."""
    h, w, _ = img.shape
    h1, w1 = (times - h % times) // 2, (times - w % times) // 2
    h2, w2 = (times - h % times) - h1, (times - w % times) - w1
    return np.pad(img, ((h1, h2), (w1, w2), (0, 0)), mode="symmetric"), (h1, h2, w1, w2)


def _equalize_hist(plane: np.ndarray) -> np.ndarray:
    """OpenCV ``equalizeHist`` of one uint8 plane (float32 scale, round half to even, first bin -> 0)."""
    hist = np.bincount(plane.reshape(-1), minlength=256)
    i0 = int(np.flatnonzero(hist)[0])
    rest = plane.size - hist[i0]
    if rest == 0:
        return np.full_like(plane, i0)
    scale = np.float32(255) / np.float32(rest)
    counted = np.concatenate([np.zeros(i0 + 1, np.int64), np.cumsum(hist[i0 + 1 :])])
    lut = np.clip(np.rint(counted.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return lut[plane]


def _llflow_histeq(img: np.ndarray) -> np.ndarray:
    """``hiseq_color_cv2_img``: split, equalise each channel, merge."""
    return np.stack([_equalize_hist(np.ascontiguousarray(img[:, :, c])) for c in range(img.shape[2])], axis=2)


def _llflow_t(arr: np.ndarray) -> torch.Tensor:
    return torch.Tensor(np.expand_dims(arr.transpose([2, 0, 1]), axis=0).astype(np.float32)) / 255


def _llflow_prepare(path: Path) -> tuple[torch.Tensor, tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """imread (8-bit RGB), auto_padding, histeq of the padded image, ``cat(log(t(x)), t(his))``."""
    lr = np.asarray(Image.open(path).convert("RGB"))  # cv2.imread(path)[:, :, [2, 1, 0]] for 8-bit RGB files
    lr, pads = _llflow_pad(lr)
    his = _llflow_histeq(lr)
    lr_t = torch.log(torch.clamp(_llflow_t(lr) + 1e-3, min=1e-3))
    return torch.cat([lr_t, _llflow_t(his)], dim=1), pads, lr, his


def _llflow_final(sr: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    h1, h2, w1, w2 = pads
    return torch.clamp(sr, 0, 1)[:, :, h1 : sr.shape[2] - h2, w1 : sr.shape[3] - w2]


def _llflow_rgb(t: torch.Tensor) -> np.ndarray:
    """Upstream ``rgb()``: clip, * 255 and truncate (astype), not round."""
    return (np.clip(t[0].detach().cpu().numpy().transpose([1, 2, 0]), 0, 1) * 255).astype(np.uint8)


def _llflow_enhance_file(net: nn.Module, src: Path, dst: Path) -> None:
    with torch.no_grad():
        lq, pads, _, _ = _llflow_prepare(src)
        sr = _llflow_rgb(_llflow_final(net(lq), pads))
    # cv2.imwrite defaults: zlib level 1 and the RLE strategy (OpenCV also forces the Sub filter)
    Image.fromarray(sr).save(dst, format="PNG", compress_level=1, compress_type=3)


# ------------------------------------------------------------------------------------------------
# Families: what each side loads and runs, and how the baseline is checked against the fixtures.


@dataclass
class Family:
    name: str  # lle family
    model: str  # registry name (llflow: the derived mid entry, see _lle_llflow)
    weights: Path
    photo: str  # source photo under ../shared/data
    golden_rtol: float  # relative to each array's largest magnitude, as in the parity tests
    build: Callable[[], nn.Module]
    load_per_image: bool  # the upstream script reloads the model for every image
    read: Callable[[Path], Any]  # the upstream script's file -> network input
    network: Callable[[nn.Module, Any], torch.Tensor]  # network input -> output
    enhance_file: Callable[[Family, nn.Module, Path, Path], None]  # read, run, write the upstream way
    golden: Callable[[Family, nn.Module], tuple[float, dict[str, Any]]]
    check_weights: Callable[[Family], None]
    strict_diff: bool = True  # lle's PNG must be within 1 level of the official one


def _generic_enhance_file(fam: Family, net: nn.Module, src: Path, dst: Path) -> None:
    with torch.no_grad():
        x = fam.read(src)
        if fam.load_per_image:
            net = _official_net(fam)
        _official_write(fam.network(net, x), dst)


def _rel_err(a: np.ndarray, golden: np.ndarray) -> float:
    return float(np.abs(a - golden).max() / np.abs(golden).max())


def _golden_dir(fam: Family) -> Callable[[str], Path]:
    if fam.name == "illumination_unet":
        return lambda img: GOLDEN / "unet" / "rave_unpaired" / f"{img}_enhanced.npy"
    return lambda img: GOLDEN / "scllle" / f"{img}_enhance_image.npy"


def _generic_golden(fam: Family, net: nn.Module) -> tuple[float, dict[str, Any]]:
    worst = 0.0
    for img in GOLDEN_IMAGES:
        x = torch.from_numpy(np.load(GOLDEN / "inputs" / f"{img}_float.npy"))
        with torch.no_grad():
            y = fam.network(net, x).numpy()
        worst = max(worst, _rel_err(y, np.load(_golden_dir(fam)(img))))
    return worst, {}


def _llflow_golden(fam: Family, net: nn.Module) -> tuple[float, dict[str, Any]]:
    """From the golden PNGs through the whole upstream path: exact padding and histeq, then the
    final image (clamped, un-padded) and the raw heat-0 output against the official code's."""
    worst, detail = 0.0, {}
    common = GOLDEN / "llflow" / "common"
    for img in LLFLOW_GOLDEN_IMAGES:
        lq, pads, padded, his = _llflow_prepare(GOLDEN / "inputs" / f"{img}.png")
        if not np.array_equal(_llflow_t(padded).numpy(), np.load(common / f"{img}_padded.npy")):
            raise RuntimeError(f"{img}: padding differs from the official auto_padding")
        if not np.array_equal(_llflow_t(his).numpy(), np.load(common / f"{img}_histeq.npy")):
            raise RuntimeError(f"{img}: histogram equalisation differs from OpenCV's")
        with torch.no_grad():
            sr = net(lq)
        final = _llflow_final(sr, pads)
        err = _rel_err(final.numpy(), np.load(GOLDEN / "llflow" / "mid" / f"{img}_final.npy"))
        official8 = np.asarray(Image.open(GOLDEN / "llflow" / "mid" / f"{img}_final_uint8.png").convert("RGB"), dtype=np.int16)
        detail[img] = {
            "net_input_rel_err": float(f"{_rel_err(lq.numpy(), np.load(common / f'{img}_net_input.npy')):.2e}"),
            "heat0_rel_err": float(f"{_rel_err(sr.numpy(), np.load(GOLDEN / 'llflow' / 'mid' / f'{img}_reverse_heat0.npy')):.2e}"),
            "final_rel_err": float(f"{err:.2e}"),
            "uint8_png_max_level_diff": int(np.abs(_llflow_rgb(final).astype(np.int16) - official8).max()),
        }
        worst = max(worst, err)
    return worst, detail


def _check_upstream_weights(fam: Family) -> None:
    from lle_cli.registry import get_registry
    from lle_cli.weights import sha256_file

    entry = get_registry().resolve(fam.model)
    if entry.upstream is None or sha256_file(fam.weights) != entry.upstream.sha256:
        raise RuntimeError(f"{fam.weights}: not the authors' checkpoint for {fam.model} (sha256 differs from the manifest)")


def _check_fixture_weights(fam: Family) -> None:
    # golden/MANIFEST.json lists no sha256 for this file; reproducing the fixtures is the check
    if not fam.weights.is_file():
        raise RuntimeError(f"{fam.weights}: missing (part of ../shared/golden)")


FAMILIES = {
    "illumination_unet": Family(
        "illumination_unet", "rave.unpaired", SHARED / "upstream" / "weights" / "rave_unpaired.pth",
        "backlit/110_51093502029_o.jpg", 1e-5, _PlainIlluminationUNet, False, _read_to_tensor,
        lambda net, x: torch.clamp(x / net(x), 0, 1), _generic_enhance_file, _generic_golden, _check_upstream_weights,
    ),
    "zero_dce": Family(
        "zero_dce", "scl-lle.official", SHARED / "upstream" / "weights" / "scl_lle.pth", "lol_eval15/low/1.png", 1e-5,
        _PlainCurveNet, True, _read_numpy, lambda net, x: net(x)[1], _generic_enhance_file, _generic_golden,
        _check_upstream_weights,
    ),
    "llflow": Family(
        "llflow", "llflow.mid-bench", LLFLOW_WEIGHTS, "lol_eval15/low/1.png", 1e-4, _PlainLLFlow, False,
        lambda p: _llflow_prepare(p)[0], lambda net, lq: net(lq), lambda fam, net, src, dst: _llflow_enhance_file(net, src, dst),
        _llflow_golden, _check_fixture_weights, strict_diff=False,
    ),
}


def _official_net(fam: Family) -> nn.Module:
    net = fam.build()
    net.load_state_dict(_official_state(fam.weights))
    return net.eval()


def _lle_model(fam: Family):
    """The model the way ``lle_cli.api.load_model`` builds it (for LLFlow from a derived manifest entry:
    the standard LOL-pc entry with nb 8 and K 2, as tests/models/test_llflow_parity.py does)."""
    from lle_cli import api

    if fam.name != "llflow":
        return api.load_model(fam.model, weights=fam.weights, device="cpu", precision="fp32")
    from lle_cli._cpu import prepare_for_inference
    from lle_cli.models import FAMILIES, build_model, load_state_strict
    from lle_cli.registry import Registry, manifest_path
    from lle_cli.runner import LoadedModel
    from lle_cli.weights import load_upstream_checkpoint

    raw = json.loads(manifest_path().read_text())
    base = {k: v for k, v in raw["models"]["llflow.lol"].items() if k != "ood_stats"}
    raw["models"][fam.model] = {**base, "architecture": {"nb": 8, "K": 2}, "parameters": 9352691}
    entry = Registry(raw).resolve(fam.model)
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, load_upstream_checkpoint(fam.weights), source=str(fam.weights))
    dev = torch.device("cpu")
    module.eval().to(dev, torch.float32)
    prepare_for_inference(module, FAMILIES[entry.family].channels_last, dev)
    return LoadedModel(entry, module, dev, torch.float32, str(fam.weights))


def _conv_flops(net: nn.Module, run: Callable[[], Any]) -> int:
    """2 x multiply-accumulates of every convolution (and LLFlow's 1x1 invertible convs) in ``run()``."""
    macs = 0

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = mod.kernel_size
        macs += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    for m in net.modules():
        if isinstance(m, _PlainInvConv):  # called through .reverse, not forward: wrap it
            orig = m.reverse

            def counted(z, logdet, _orig=orig, _c=m.weight.shape[0]):
                nonlocal macs
                macs += z.numel() * _c
                return _orig(z, logdet)

            m.reverse = counted
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        for m in net.modules():
            if isinstance(m, _PlainInvConv):
                del m.reverse
    return 2 * macs


# ------------------------------------------------------------------------------------------------
# Workers: one persistent process per side, JSON lines in and out.


def _timed(fn: Callable[[], Any]) -> dict[str, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


class _OfficialSide:
    def __init__(self, fam: Family) -> None:
        self.fam = fam
        self.net: nn.Module | None = None
        self.inputs: dict[str, Any] = {}

    def op_load(self) -> dict[str, Any]:
        self.fam.check_weights(self.fam)
        self.net = _official_net(self.fam)
        return {}

    def op_golden(self) -> dict[str, Any]:
        err, detail = self.fam.golden(self.fam, self.net)
        return {"rel_err": err, "detail": detail}

    def op_enhance(self, src: str, dst: str) -> dict[str, float]:
        return _timed(lambda: self.fam.enhance_file(self.fam, self.net, Path(src), Path(dst)))

    def _input(self, src: str) -> Any:
        if src not in self.inputs:
            self.inputs = {src: self.fam.read(Path(src))}
        return self.inputs[src]

    def op_network(self, src: str) -> dict[str, float]:
        x = self._input(src)

        def run() -> None:
            with torch.no_grad():
                self.fam.network(self.net, x)

        return _timed(run)

    def op_flops(self, src: str) -> dict[str, int]:
        x = self._input(src)
        return {"flops": _conv_flops(self.net, lambda: self.fam.network(self.net, x))}


class _LleSide:
    def __init__(self, fam: Family) -> None:
        self.fam = fam
        self.model = None
        self.inputs: dict[str, torch.Tensor] = {}

    def op_load(self) -> dict[str, Any]:
        self.fam.check_weights(self.fam)
        self.model = _lle_model(self.fam)
        return {}

    def op_enhance(self, src: str, dst: str) -> dict[str, float]:
        from lle_cli.batch import Job, OutputOptions, run_batch

        def run() -> None:
            (res,) = run_batch(self.model, [Job(src, dst)], OutputOptions(overwrite=True))
            if res.status != "ok":
                raise RuntimeError(f"lle failed on {src}: {res.error}")

        return _timed(run)

    def op_tile(self, height: int, width: int) -> dict[str, Any]:
        """The tiles ``lle enhance`` runs for this size (None: the image runs whole)."""
        plan = self.model.tile_plan(height, width)
        return {"tile": None if plan is None else plan.describe()}

    def op_network(self, src: str) -> dict[str, float]:
        if src not in self.inputs:
            self.inputs = {src: _read_to_tensor(Path(src))}
        x = self.inputs[src]
        return _timed(lambda: self.model.enhance_tensor(x))


def worker_main(side: str, family: str, threads: int) -> int:
    """Serve one side: read ``{"op": ..., ...}`` lines, answer each with one JSON line (or ``{"error": ...}``)."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout (by us or a library) goes to stderr, not the pipe
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    torch.set_num_threads(threads)
    tuned = False
    if side == "lle":
        from lle_cli._cpu import keep_freed_memory

        tuned = keep_freed_memory()  # as `lle enhance` does; the official worker stays a plain process
    fam = FAMILIES[family]
    handler = _OfficialSide(fam) if side == "official" else _LleSide(fam)
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "quit":
                reply: dict[str, Any] = {}
            elif op == "hello":
                reply = {"pid": os.getpid(), "threads": torch.get_num_threads(), "keep_freed_memory": tuned}
            elif op == "rss":
                reply = {"peak_rss_mib": round(peak_rss_mib(), 1)}
            else:
                reply = getattr(handler, f"op_{op}")(**req)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as one line
            reply = {"error": " ".join(f"{type(e).__name__}: {e}".split())}
        try:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        except OSError:  # the parent is gone
            return 1
        if op == "quit":
            break
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """The parent's handle on one worker process; ``close`` always ends it."""

    def __init__(self, side: str, family: str, threads: int) -> None:
        self.label = f"{side} worker ({family})"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--family", family, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.busy = False  # a command is in flight (the parent was interrupted while waiting)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.busy = True
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # a broken pipe: the worker is gone
            line = ""
        self.busy = False
        if not line:
            raise WorkerError(f"{self.label} exited (code {self.proc.wait()}) during {op!r}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.label}, {op}: {reply['error']}")
        return reply

    def close(self) -> None:
        """Ask an idle worker to quit; kill one that is still busy (the parent is unwinding) or does not."""
        if self.proc.poll() is None:
            try:
                if self.busy:
                    raise WorkerError("interrupted")
                self.call("quit")
                self.proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired, OSError, ValueError):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


# ------------------------------------------------------------------------------------------------


def stats(times: list[float]) -> dict[str, Any]:
    return {
        "times_s": [round(t, 4) for t in times],
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def interleaved(
    fns: dict[str, Callable[[], dict[str, float]]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds (as each call reports them) of ``repeats`` runs of each,
    alternating the order every round (ABBA...).

    CPU time (all threads) is the steadier figure on a machine other jobs are using: it counts the
    work done, not the time spent waiting for a core.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for n in names if i % 2 == 0 else reversed(names):
            t = fns[n]()
            wall[n].append(t["wall_s"])
            cpu[n].append(t["cpu_s"])
    return wall, cpu


def _png_diff(a_path: Path, b_path: Path) -> tuple[int, float]:
    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(b_path).convert("RGB"), dtype=np.int16)
    d = np.abs(a - b)
    return int(d.max()), float((d > 1).mean())


def _caller(worker: Worker, op: str, **kw: Any) -> Callable[[], dict[str, Any]]:
    return lambda: worker.call(op, **kw)


def bench_family(fam: Family, sizes: list[tuple[int, int]], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    with contextlib.ExitStack() as stack:
        off = Worker("official", fam.name, args.threads)
        stack.callback(off.close)
        lle = Worker("lle", fam.name, args.threads)
        stack.callback(lle.close)
        hello = {"official": off.call("hello"), "lle": lle.call("hello")}
        if hello["official"]["threads"] != hello["lle"]["threads"]:
            raise WorkerError(f"{fam.name}: the workers run different thread counts: {hello}")
        if hello["official"]["keep_freed_memory"]:
            raise WorkerError(f"{fam.name}: the official worker changed the allocator")
        off.call("load")
        lle.call("load")
        golden = off.call("golden")
        golden_err = golden["rel_err"]
        print(f"{fam.name}: official re-implementation vs golden fixtures, relative error {golden_err:.1e}", file=sys.stderr)
        if golden_err > fam.golden_rtol:
            raise WorkerError(f"{fam.name}: the baseline does not reproduce the official outputs ({golden_err:.1e} > {fam.golden_rtol:.0e})")
        photo = Image.open(SHARED / "data" / fam.photo).convert("RGB")
        for w, h in sizes:
            src = tmp / f"{fam.name}_{w}x{h}.png"
            photo.resize((w, h), Image.LANCZOS).save(src)
            out_official, out_lle = tmp / f"{src.stem}_official.png", tmp / f"{src.stem}_lle.png"
            print(f"  {w}x{h}: whole process, {args.repeats} interleaved runs each", file=sys.stderr)
            whole, whole_cpu = interleaved(
                {"official": _caller(off, "enhance", src=str(src), dst=str(out_official)),
                 "lle": _caller(lle, "enhance", src=str(src), dst=str(out_lle))},
                args.repeats,
            )
            diff, frac_over_1 = _png_diff(out_official, out_lle)
            if diff > 1 and fam.strict_diff:
                raise WorkerError(f"{fam.name} {w}x{h}: lle's PNG differs from the official one by {diff} levels (> 1)")
            flops = off.call("flops", src=str(src))["flops"]
            row: dict[str, Any] = {
                "family": fam.name,
                "model": fam.model,
                "weights": fam.weights.name,
                "size": f"{w}x{h}",
                "official": stats(whole["official"]),
                "lle": stats(whole["lle"]),
                "speedup": round(statistics.median(whole["official"]) / statistics.median(whole["lle"]), 3),
                "official_cpu": stats(whole_cpu["official"]),
                "lle_cpu": stats(whole_cpu["lle"]),
                "speedup_cpu": round(statistics.median(whole_cpu["official"]) / statistics.median(whole_cpu["lle"]), 3),
                "gflop": round(flops / 1e9, 2),
                "max_level_diff_8bit": diff,
                "fraction_over_1_level": round(frac_over_1, 6),
                "within_1_level": diff <= 1,
                "lle_tiles": lle.call("tile", height=h, width=w)["tile"],
                "png_bytes": {"official": out_official.stat().st_size, "lle": out_lle.stat().st_size},
                "golden_rel_err": float(f"{golden_err:.2e}"),
                "workers": hello,
            }
            if golden["detail"]:
                row["golden_detail"] = golden["detail"]
            if diff > 1:
                row["diff_note"] = (
                    "random-weight LLFlow: the reverse flow amplifies small differences"
                    + (" (here lle also tiles the image, as `lle enhance` does at this size)" if row["lle_tiles"] else "")
                    + "; difference recorded, not enforced"
                )
            if args.compute_repeats:
                print(f"  {w}x{h}: network only, {args.compute_repeats} interleaved runs each", file=sys.stderr)
                net, net_cpu = interleaved(
                    {"official": _caller(off, "network", src=str(src)), "lle": _caller(lle, "network", src=str(src))},
                    args.compute_repeats,
                )
                per_core = args.peak_gflops / (os.cpu_count() or 1)
                for k in ("official", "lle"):
                    med = statistics.median(net[k])
                    row[f"network_{k}"] = stats(net[k])
                    gfs = flops / med / 1e9
                    gf_cpu = flops / statistics.median(net_cpu[k]) / 1e9  # per CPU-second: per busy core
                    row[f"network_{k}"].update(
                        gflop_per_s=round(gfs, 1), peak_fraction=round(gfs / args.peak_gflops, 3),
                        cpu_s=stats(net_cpu[k]), gflop_per_cpu_s=round(gf_cpu, 1), core_peak_fraction=round(gf_cpu / per_core, 3),
                    )
                row["network_speedup"] = round(statistics.median(net["official"]) / statistics.median(net["lle"]), 3)
                row["network_speedup_cpu"] = round(statistics.median(net_cpu["official"]) / statistics.median(net_cpu["lle"]), 3)
            for k in ("official", "lle"):
                gfs = flops / row[k]["median_s"] / 1e9
                row[k].update(gflop_per_s=round(gfs, 1), peak_fraction=round(gfs / args.peak_gflops, 3))
            row["peak_rss_mib_so_far"] = {"official": off.call("rss")["peak_rss_mib"], "lle": lle.call("rss")["peak_rss_mib"]}
            rows.append(row)
            print_table([row])
    return rows


def print_table(rows: list[dict[str, Any]], header: bool = True) -> None:
    cols = ["family", "size", "official min/med/max s", "lle min/med/max s", "speedup", "CPU-time speedup", "GFLOP",
            "net GFLOP/s off/lle", "% peak off/lle", "% core peak (CPU time) off/lle", "max diff"]
    cells = []
    for r in rows:
        net_o, net_l = r.get("network_official", r["official"]), r.get("network_lle", r["lle"])
        cells.append([
            r["family"], r["size"],
            f"{r['official']['min_s']:.3f}/{r['official']['median_s']:.3f}/{r['official']['max_s']:.3f}",
            f"{r['lle']['min_s']:.3f}/{r['lle']['median_s']:.3f}/{r['lle']['max_s']:.3f}",
            f"{r['speedup']:.2f}x", f"{r['speedup_cpu']:.2f}x", f"{r['gflop']:.1f}",
            f"{net_o['gflop_per_s']:.0f}/{net_l['gflop_per_s']:.0f}",
            f"{100 * net_o['peak_fraction']:.0f}/{100 * net_l['peak_fraction']:.0f}",
            f"{100 * net_o.get('core_peak_fraction', 0):.0f}/{100 * net_l.get('core_peak_fraction', 0):.0f}",
            str(r["max_level_diff_8bit"]) + ("" if r["within_1_level"] else " (!)"),
        ])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(cols)]
    lines = ([cols, ["-" * w for w in widths]] if header else []) + cells
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed whole-process runs of each, after one warm-up (default 5)")
    p.add_argument("--compute-repeats", type=int, default=3, help="timed network-only runs of each (default 3; 0 skips)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of both workers (default: torch's choice here)")
    p.add_argument("--peak-gflops", type=float, default=190.0, help="the machine's fp32 peak (default 190: 2 cores, AVX2 FMA)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    p.add_argument("--worker", choices=("official", "lle"), help=argparse.SUPPRESS)
    p.add_argument("--family", choices=sorted(FAMILIES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if not args.family or not args.threads:
            p.error("--worker needs --family and --threads")
        return worker_main(args.worker, args.family, args.threads)
    if args.repeats < 1 or args.compute_repeats < 0:
        p.error("--repeats must be at least 1 and --compute-repeats at least 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if not GOLDEN.is_dir() or not (SHARED / "upstream" / "weights").is_dir():
        p.error(f"{SHARED} (golden fixtures and upstream weights) is missing")
    # SIGTERM unwinds like an error, so the workers are ended too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.threads = args.threads or torch.get_num_threads()  # fixed here, so both workers get the same
    torch.set_num_threads(args.threads)

    env = environment(
        peak_gflops=args.peak_gflops,
        note="machine shared with other jobs; official and lle runs interleaved so the ratio of medians is fair",
        network_only="official: the network on the upstream script's input tensor (for LLFlow get_sr on lq, after "
        "the numpy padding and histeq); lle: LoadedModel.enhance_tensor on the RGB tensor (for LLFlow including its "
        "padding and histeq; never tiled, while the whole-process lle run tiles large images as `lle enhance` does)",
        flops="GFLOP counts every convolution as the direct method computes it (forward hooks); lle runs LLFlow's "
        "wide 3x3 convolutions as Winograd transforms (NNPACK, far fewer multiplications), so its GFLOP/s there are "
        "direct-equivalent and can exceed the machine's peak",
        processes="each side in its own persistent worker process; times taken inside the worker around read + run + "
        "write; the lle worker calls keep_freed_memory() as `lle enhance` does, the official worker does not",
        baseline={
            "illumination_unet": "RAVE inference.py: PIL + ToTensor, plain fp32 UNet under no_grad, loaded once, "
            "torchvision save_image (Pillow PNG, level 6)",
            "zero_dce": "SCL-LLE lowlight_test.py: np/255 + permute (NHWC strides), plain fp32 net built and loaded per "
            "image, save_image",
            "llflow": "LLFlow test_unpaired.py get_sr at heat 0: 8-bit RGB read, auto_padding (16, symmetric), "
            "equalizeHist per channel (numpy), log input + histeq, plain fp32 ConEncoder1 + FlowUpsamplerNet "
            "reverse (ActNorms unfolded, W^-1 in float64 every step), clamp, un-pad, truncate to uint8, PNG with "
            "cv2.imwrite's defaults (zlib 1, RLE) via Pillow; weights: golden mid random (LOL-pc, nb 8, K 2)",
        },
    )
    print(f"torch {env['threads']} threads per worker, {env['cpu']}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="lle-vs-official-") as tmp:
            for name in args.families:
                rows.extend(bench_family(FAMILIES[name], args.sizes, args, Path(tmp)))
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print_table(rows)
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
