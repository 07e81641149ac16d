"""LLFlow's conditional encoder g (paper Sec. 3.2, upstream ``ConEncoder1``).

Input: the log image and its histogram equalisation (``lq``, 6 channels). The encoder adds the colour
map C(x) = x / sum_c(x) (eq. 5, on ``exp`` of the log channels) and the noise map
N(x) = max(|d_H C|, |d_W C|) (eq. 6, central differences with zeros outside), runs an RRDB trunk at half
resolution and returns the conditioning pyramid the flow consumes plus its colour-map head g(x_l),
the mean of the latent.

Attribute names follow upstream so the authors' checkpoints load unchanged. Upstream's
``downconv3``, ``HRconv``, ``conv_last`` and ``awb_para`` are never called in its forward pass; they
are not built here (their checkpoint keys are skipped on load, see ``UNUSED_CHECKPOINT_PREFIXES``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LLFlowConfig
from ...flows.layers import Conv2d

__all__ = ["ConditionEncoder", "EncoderFeatures", "colour_map", "noise_map"]


def colour_map(rgb: torch.Tensor) -> torch.Tensor:
    """Eq. 5: each channel over the channel sum (upstream adds 1e-4 to the sum)."""
    return rgb / (rgb.sum(dim=1, keepdim=True) + 1e-4)


def _central_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``0.5 * (x[i+1] - x[i-1])`` along ``dim`` with zeros beyond the border."""
    n = x.shape[dim]
    nxt = torch.zeros_like(x)
    prv = torch.zeros_like(x)
    nxt.narrow(dim, 0, n - 1).copy_(x.narrow(dim, 1, n - 1))
    prv.narrow(dim, 1, n - 1).copy_(x.narrow(dim, 0, n - 1))
    return 0.5 * (nxt - prv)


def noise_map(cmap: torch.Tensor) -> torch.Tensor:
    """Eq. 6: the larger absolute gradient of the colour map, per pixel and channel."""
    return torch.maximum(_central_difference(cmap, 2).abs(), _central_difference(cmap, 3).abs())


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convolutions with dense concatenation, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = (self.conv1, self.conv2, self.conv3, self.conv4)
        if torch.is_grad_enabled():
            feats = [x]
            for conv in convs:
                feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
            return self.conv5(torch.cat(feats, 1)) * 0.2 + x
        # Inference: grow one buffer instead of re-concatenating every step (~30% faster, same
        # values); autograd forbids writing into a tensor whose slices it saved, hence two paths.
        c, gc = x.shape[1], self.conv1.out_channels
        buf = x.new_empty(x.shape[0], c + 4 * gc, *x.shape[2:])
        buf[:, :c] = x
        for i, conv in enumerate(convs):
            n = c + i * gc
            # the activation writes straight into the buffer: one pass instead of activate + copy
            torch.ops.aten.leaky_relu.out(conv(buf[:, :n]), 0.2, out=buf[:, n : n + gc])
        return self.conv5(buf).mul_(0.2).add_(x)  # in place: same rounding, no 64-channel temporaries


class _RRDB(nn.Module):
    """Residual in residual dense block (ESRGAN)."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1 = _DenseBlock(nf, gc)
        self.RDB2 = _DenseBlock(nf, gc)
        self.RDB3 = _DenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.RDB3(self.RDB2(self.RDB1(x)))
        return y * 0.2 + x if torch.is_grad_enabled() else y.mul_(0.2).add_(x)


@dataclass
class EncoderFeatures:
    """What the flow needs from one encoder pass (all at the padded size's fractions).

    ``levels[i]`` conditions flow level ``i + 1``: the raw features at 1/2, 1/4, 1/8 resolution with
    the stacked RRDB outputs concatenated (upstream ``rrdbPreprocessing``: fea_up2, fea_up1, fea_up0).
    ``color_map`` is g(x_l) at full padded resolution; ``squeeze2d(color_map, 8)`` is the latent mean.
    """

    levels: list[torch.Tensor]
    color_map: torch.Tensor


# The encoder's full-resolution head runs on strips of about this many pixels in inference, each
# with this many rows of context above and below (noise map: 1, conv_first: 1, conv_second: 1).
_HEAD_STRIP_PIXELS = 1 << 18
_HEAD_HALO = 3


def _half(x: torch.Tensor) -> torch.Tensor:
    # upstream's exact call: for even sizes this is 2x2 averaging mathematically, not bit for bit
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=True)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` as two elementwise maxima (rows, then columns): the same values, ~8x
    faster on the CPU, where the NCHW pooling kernel takes 50 ms on a 600x400 image's 64-channel map."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class ConditionEncoder(nn.Module):
    """Upstream ``ConEncoder1`` (the parts its forward pass uses)."""

    def __init__(self, config: LLFlowConfig) -> None:
        super().__init__()
        self.config = cfg = config
        nf = cfg.nf
        self.conv_first = Conv2d(cfg.encoder_in_channels, nf, 3, 1, 1)
        self.conv_second = Conv2d(nf, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(_RRDB(nf, cfg.gc) for _ in range(cfg.nb)))
        self.trunk_conv = Conv2d(nf, nf, 3, 1, 1)
        self.downconv1 = Conv2d(nf, nf, 3, 1, 1)
        self.downconv2 = Conv2d(nf, nf, 3, 1, 1)
        self.fine_tune_color_map = nn.Sequential(Conv2d(nf, 3, 1, 1), nn.Sigmoid())

    @staticmethod
    def first_conv_input(lq: torch.Tensor) -> torch.Tensor:
        """``cat(lq, C(exp(log image)), N(C))``: the 12 channels of paper Fig. 3."""
        cmap = colour_map(lq[:, :3].exp())
        return torch.cat([lq, cmap, noise_map(cmap)], dim=1)

    def _head(self, lq: torch.Tensor) -> torch.Tensor:
        """``fea_head``: the two full-resolution convolutions, max-pooled to half resolution.

        In inference this runs in horizontal strips: at full resolution each 64-channel map (and the
        convolution's reordered copies of it) costs 256 bytes per pixel, more than everything the
        encoder keeps at half resolution. A strip reads 3 extra rows on each side (the noise map's
        central difference and two 3x3 convolutions), so its kept rows are exact.
        """
        h = lq.shape[-2]
        rows = max(_HEAD_STRIP_PIXELS // lq.shape[-1], 8) // 2 * 2  # even: strips pool in pairs
        if torch.is_grad_enabled() or h <= rows or h % 2:
            return self._head_strip(lq)
        out = lq.new_empty(lq.shape[0], self.config.nf, h // 2, lq.shape[-1] // 2)
        for y0 in range(0, h, rows):
            y1 = min(y0 + rows, h)
            lo, hi = max(y0 - _HEAD_HALO, 0), min(y1 + _HEAD_HALO, h)
            part = self._head_strip(lq[..., lo:hi, :], keep=(y0 - lo, y1 - lo))
            out[..., y0 // 2 : y1 // 2, :] = part
        return out

    def _head_strip(self, lq: torch.Tensor, keep: tuple[int, int] | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.conv_first(self.first_conv_input(lq)), 0.2, inplace=not torch.is_grad_enabled())
        h = self.conv_second(h)
        if keep is not None:
            h = h[..., keep[0] : keep[1], :]
        return F.max_pool2d(h, 2) if torch.is_grad_enabled() else _max_pool2(h)

    def block_features(self, lq: torch.Tensor) -> torch.Tensor:
        """All RRDB block outputs concatenated, (B, nb * nf, H/2, W/2): a descriptor for OOD scoring."""
        out = self._head(lq)
        blocks = []
        for block in self.RRDB_trunk:
            out = block(out)
            blocks.append(out)
        return torch.cat(blocks, dim=1)

    def forward(self, lq: torch.Tensor) -> EncoderFeatures:
        nf, stack = self.config.nf, self.config.stack_blocks
        head = self._head(lq)
        # Level 1's feature (fea_down2, then the stacked block outputs) is filled in place as the
        # trunk runs: no block output outlives its successor and nothing is concatenated at half
        # resolution (each 320-channel copy there costs 320 bytes per input pixel).
        level1 = head.new_empty(head.shape[0], nf * (1 + len(stack)), *head.shape[2:])
        inference = not torch.is_grad_enabled()
        if inference:  # head lives in level 1's first channels until fea_down2 replaces it there
            level1[:, :nf] = head
            head = level1[:, :nf]
        out = head
        for i, block in enumerate(self.RRDB_trunk):
            out = block(out)
            for k in (k for k, b in enumerate(stack) if b == i):
                level1[:, nf * (1 + k) : nf * (2 + k)] = out
        if inference:
            fea_down2 = head.add_(self.trunk_conv(out))
        else:  # autograd saved ``head`` for the first block's backward: no writing into it
            fea_down2 = head + self.trunk_conv(out)
            level1[:, :nf] = fea_down2
        del head, out
        # Upstream applies an in-place LeakyReLU to fea_down4 before the next step, so the feature
        # it returns for level 2 (fea_up1) is the activated one; fea_down8 has no activation.
        fea_down4 = F.leaky_relu(self.downconv1(_half(fea_down2)), 0.2)
        fea_down8 = self.downconv2(_half(fea_down4))
        # Upstream upsamples fea_down2 (nearest) before the 1x1 conv + sigmoid; both are per pixel,
        # so running them first at half resolution gives the same values for a quarter of the memory.
        color_map = F.interpolate(self.fine_tune_color_map(fea_down2), scale_factor=2)
        if not stack:
            return EncoderFeatures([level1, fea_down4, fea_down8], color_map)
        # Upstream resizes the stacked outputs (nearest) to 1/4 and 1/8: every 2nd and 4th pixel.
        stacked = level1[:, nf:]
        levels = [level1] + [torch.cat([f, stacked[..., ::s, ::s]], dim=1) for f, s in ((fea_down4, 2), (fea_down8, 4))]
        return EncoderFeatures(levels, color_map)
