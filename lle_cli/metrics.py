"""Full-reference quality metrics on 8-bit images, as image-enhancement papers report them.

PSNR over all pixels and channels. SSIM (Wang et al. 2004) in the variant most LOL numbers are
reported with (scikit-image's default): a 7x7 uniform window, sample covariance, K1 = 0.01,
K2 = 0.03, per RGB channel on the valid region, averaged. With it the official Zero-DCE weights
score 14.86 dB / 0.562 on the 15 LOL evaluation pairs, the figures our issue tracker quotes.

The other pieces an evaluation protocol is made of live here too, as pure functions: the grey
conversion, the column-wise SSIM that LLFlow's published grey SSIM actually is, quantisation to
8 bits and the mean-brightness alignment. Which of them a protocol uses, and why, is decided in
``lle_cli.evaluate``. NIQE (no reference) is built in and reproduces BasicSR's implementation.
LPIPS and other no-reference metrics come from optional libraries whose weights must already be on
disk: ``no_downloads`` turns any download attempt into a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import math
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "psnr",
    "ssim",
    "ssim_columns",
    "grey_u8",
    "grey_float",
    "quantise",
    "scale_to_mean",
    "block_ratio",
    "niqe",
    "y_channel",
    "imresize_half",
    "NIQE_BLOCK",
    "MetricUnavailableError",
    "no_downloads",
    "load_lpips",
    "load_no_reference",
]

WINDOW = 7  # scikit-image's default SSIM window side
# BT.601 luma weights (R, G, B), and the 15-bit fixed-point version of them that the OpenCV wheels
# from PyPI apply to 8-bit input: cv2.cvtColor(..., COLOR_RGB2GRAY) equals
# (9798 R + 19235 G + 3735 B + 2^14) >> 15 for all 2^24 colours (checked against opencv-python 4.10
# and 5.0 on x86-64 when this was written; LLFlow's measurements used such a wheel).
LUMA = (0.299, 0.587, 0.114)
_LUMA_FIXED = (9798, 19235, 3735)
_FIXED_SHIFT = 15


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _box_sums(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Sum of every kh x kw window (valid region) of (..., H, W) float64 data, via an integral image.

    For 8-bit data the integral images of x, x^2 and xy are integers below 2^53, so the window sums
    are exact and the result does not depend on summation order.
    """
    c = np.zeros((*x.shape[:-2], x.shape[-2] + 1, x.shape[-1] + 1), dtype=np.float64)
    c[..., 1:, 1:] = x.cumsum(axis=-2).cumsum(axis=-1)
    return c[..., kh:, kw:] - c[..., :-kh, kw:] - c[..., kh:, :-kw] + c[..., :-kh, :-kw]


def _ssim_mean(x: np.ndarray, y: np.ndarray, kh: int, kw: int, data_range: float) -> float:
    """Mean SSIM map over the valid region of (C, H, W) float64 images with a kh x kw uniform window."""
    n = kh * kw
    mx, my = _box_sums(x, kh, kw) / n, _box_sums(y, kh, kw) / n
    unbias = n / (n - 1)  # sample covariance
    sxx = (_box_sums(x * x, kh, kw) / n - mx**2) * unbias
    syy = (_box_sums(y * y, kh, kw) / n - my**2) * unbias
    sxy = (_box_sums(x * y, kh, kw) / n - mx * my) * unbias
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def _planes(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W) float64."""
    x = np.asarray(a, dtype=np.float64)
    return x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)


def _check_pair(a: np.ndarray, b: np.ndarray, min_h: int, min_w: int) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.shape[0] < min_h or a.shape[1] < min_w:
        raise ValueError(f"image of {a.shape[1]}x{a.shape[0]} pixels is smaller than the {min_w}x{min_h} SSIM window")


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two (H, W, C) or (H, W) images with values in [0, data_range]."""
    _check_pair(a, b, WINDOW, WINDOW)
    return _ssim_mean(_planes(a), _planes(b), WINDOW, WINDOW, data_range)


def ssim_columns(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of each column of two (H, W) grey images as a 1-D signal (7-tap window), averaged.

    This is what LLFlow's grey SSIM computes: its ``Measure.ssim`` passes 2-D grey images to
    scikit-image 0.18's ``structural_similarity`` with ``multichannel=True``, which treats the last
    axis (the columns) as channels and runs a 1-D SSIM on each (window 7, sample covariance with
    N = 7). Same constants as ``ssim``; the only difference is the window's shape.
    """
    if a.ndim != 2:
        raise ValueError("ssim_columns takes 2-D grey images")
    _check_pair(a, b, WINDOW, 1)
    # a 7x1 window slides down each column only
    return _ssim_mean(_planes(a), _planes(b), WINDOW, 1, data_range)


def grey_u8(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an 8-bit (H, W, 3) RGB image, rounded to 8 bits exactly as OpenCV's ``COLOR_RGB2GRAY``."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    wr, wg, wb = _LUMA_FIXED
    return ((wr * r + wg * g + wb * b + (1 << (_FIXED_SHIFT - 1))) >> _FIXED_SHIFT).astype(np.uint8)


def grey_float(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in float64, on the input's own scale."""
    x = rgb.astype(np.float64)
    return LUMA[0] * x[..., 0] + LUMA[1] * x[..., 1] + LUMA[2] * x[..., 2]


def block_ratio(rgb: np.ndarray, period: int = 8) -> float:
    """Blockiness of an (H, W, 3) image: mean |luma step| across the ``period``-pixel grid lines over the mean off them.

    A flow decoded from a latent ``period`` times smaller than the image shows its noise as squares
    of that size when the model has not learned the conditional distribution; those squares put
    larger steps on the grid lines. Natural images score about 1.0 (LOL's normal-light images 1.05).
    Both axes count: horizontal steps between columns ``j`` and ``j + 1`` lie on the grid when
    ``(j + 1) % period == 0``, vertical steps likewise. NaN for an image with no steps off the grid.
    """
    y = grey_float(np.asarray(rgb, dtype=np.float64))
    on, off, n_on, n_off = 0.0, 0.0, 0, 0
    for d in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        grid = (np.arange(d.shape[1]) + 1) % period == 0
        on += float(d[:, grid].sum())
        off += float(d[:, ~grid].sum())
        n_on += int(grid.sum()) * d.shape[0]
        n_off += int((~grid).sum()) * d.shape[0]
    if n_on == 0 or n_off == 0 or off == 0:
        return math.nan
    return (on / n_on) / (off / n_off)


def quantise(x: np.ndarray, mode: str = "round") -> np.ndarray:
    """Float image in [0, 1] -> uint8.

    ``round``: ``floor(255 x + 0.5)``, what torchvision's ``save_image`` (used by the Zero-DCE and
    SCL-LLE test scripts) writes. ``truncate``: ``floor(255 x)`` in float32, LLFlow's
    ``(np.clip(x, 0, 1) * 255).astype(np.uint8)``.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    if mode == "round":
        return np.floor(x * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    if mode == "truncate":
        return (x * np.float32(255)).astype(np.uint8)
    raise ValueError(f"unknown quantisation {mode!r}")


def scale_to_mean(x: np.ndarray, current: float, target: float) -> tuple[np.ndarray, float]:
    """Multiply a [0, 1] float image by ``target / current`` and clip: a global brightness match.

    Returns the image and the gain; an all-black image (``current`` 0) cannot be scaled and is
    returned unchanged with gain NaN.
    """
    if not current > 0:
        return np.asarray(x, dtype=np.float32), math.nan
    gain = float(target) / float(current)
    return np.clip(np.asarray(x, dtype=np.float32) * np.float32(gain), 0.0, 1.0), gain


# ---------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan and Bovik, IEEE SPL 2013), computed as BasicSR computes it.
#
# Papers in this field (SCL-LLE's table among them) report BasicSR's NIQE, which matches the NIQE
# authors' MATLAB release to 1e-4 on its test image; so lle reproduces BasicSR, step for step where
# it matters. Its numbers hinge on float32 details: a flat region normalises to values of one ulp of
# either sign or to exactly 0, and which of the three they are changes the AGGD fit of every block
# that contains them (left and right spreads count strictly negative and positive values). So the
# steps BasicSR runs in float32 (Y conversion, local mean and deviation, the bicubic half-size
# image, the moments of each block) run here in float32 with the same operations in the same order.
# On the images of ../shared/data the result equals BasicSR's to 1e-12.

NIQE_BLOCK = 96  # block side of the pristine model, the NIQE authors' recommended value
_NIQE_PARAMS = Path(__file__).with_name("data") / "niqe_pris_params.npz"
# MATLAB's rgb2ycbcr (BT.601, studio range) Y weights in BasicSR's (B, G, R) order, for [0, 1] input
_Y_WEIGHTS_BGR = np.array([24.966, 128.553, 65.481])
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and the two diagonal neighbours


@functools.lru_cache(maxsize=1)
def _niqe_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu (1, 36), cov (36, 36), 7x7 Gaussian window) of the pristine model, read once."""
    try:
        with np.load(_NIQE_PARAMS) as z:
            return z["mu_pris_param"], z["cov_pris_param"], z["gaussian_window"]
    except (OSError, KeyError, ValueError) as e:
        raise MetricUnavailableError(
            f"{_NIQE_PARAMS}: NIQE's pristine parameters are missing or unreadable ({e}); reinstall lle-cli"
        ) from None


@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BasicSR's grid of AGGD shapes (0.2 to 10 in steps of 0.001) and, per shape, the ratio the fit
    matches, the factor from spread to scale, and the factor from scales to mean (Eq. 7-8)."""
    shape = np.arange(0.2, 10.001, 0.001)  # the same expression, so the same 9801 float64 values
    gamma = np.vectorize(math.gamma, otypes=[np.float64])
    inv = np.reciprocal(shape)
    ratio = np.square(gamma(inv * 2)) / (gamma(inv) * gamma(inv * 3))
    spread_to_scale = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    mean_factor = gamma(2 / shape) / gamma(1 / shape)
    return shape, ratio, spread_to_scale, mean_factor


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2ycbcr`` luma of an (H, W, 3) RGB image on the 0-255 scale, as float32 rounded to
    integers: what BasicSR's ``calculate_niqe(..., convert_to='y')`` measures, operation for operation."""
    bgr = np.ascontiguousarray(np.asarray(rgb)[..., ::-1]).astype(np.float32) / np.float32(255)
    y = (np.dot(bgr, _Y_WEIGHTS_BGR) + 16.0) / 255.0  # float64, as numpy promotes float32 . float64
    return (y.astype(np.float32) * np.float32(255)).round()


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5), MATLAB's ``imresize`` 'bicubic'."""
    ax = torch.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (ax <= 1).type_as(ax)
    far = ((ax > 1) * (ax <= 2)).type_as(ax)
    return (1.5 * ax3 - 2.5 * ax2 + 1) * near + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * far


def _resize_taps(n_in: int, n_out: int, scale: float) -> tuple[torch.Tensor, list[int], int, int]:
    """Per output pixel: its normalised cubic weights, where its taps start in the padded line, and
    how many mirrored pixels the line needs before and after (MATLAB's symmetric border)."""
    width = 4.0 / scale if scale < 1 else 4.0  # antialiasing widens the kernel when shrinking
    x = torch.arange(1, n_out + 1, dtype=torch.float32)  # MATLAB's 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # their centres in input coordinates
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2  # one tap more on each side than the kernel can reach
    index = left.view(n_out, 1) + torch.arange(taps, dtype=torch.float32).view(1, taps)
    dist = u.view(n_out, 1) - index
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / torch.sum(w, 1).view(n_out, 1)
    # MATLAB drops the outermost tap columns when some output gives them zero weight
    zeros = torch.sum(w == 0, 0)
    if int(zeros[0]) != 0:
        index, w = index[:, 1:], w[:, 1:]
    if int(zeros[-1]) != 0:
        index, w = index[:, :-1], w[:, :-1]
    before = int(-index.min()) + 1
    after = int(index.max()) - n_in
    starts = [int(i) for i in index[:, 0] + before - 1]
    return w.contiguous(), starts, before, max(after, 0)


def _mirror(t: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    parts = [t.narrow(dim, 0, before).flip(dim), t] if before > 0 else [t]
    if after > 0:
        parts.append(t.narrow(dim, t.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim).contiguous()


def imresize_half(image: np.ndarray) -> np.ndarray:
    """MATLAB's ``imresize(image, 0.5)`` (bicubic, antialiased) of a float32 (H, W) image, in float32.

    Each output line is one matrix-vector product over its mirrored input taps, first down the
    columns and then along the rows, as BasicSR's ``imresize`` computes it, so that the float32
    roundings (which decide NIQE's normalised values in flat areas) are the same.
    """
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    h, w = img.shape
    out_h, out_w = math.ceil(h * 0.5), math.ceil(w * 0.5)
    wh, sh, bh, ah = _resize_taps(h, out_h, 0.5)
    ww, sw, bw, aw = _resize_taps(w, out_w, 0.5)
    padded = _mirror(img, bh, ah, 0)
    k = wh.shape[1]
    rows = torch.empty(out_h, w, dtype=torch.float32)
    for i, s in enumerate(sh):
        rows[i, :] = padded[s : s + k, :].transpose(0, 1).mv(wh[i])
    padded = _mirror(rows, bw, aw, 1)
    k = ww.shape[1]
    out = torch.empty(out_h, out_w, dtype=torch.float32)
    for j, s in enumerate(sw):
        out[:, j] = padded[:, s : s + k].mv(ww[j])
    return out.numpy()


def _local_mean(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.convolve(image, window, mode='nearest')`` for float32 input: float64 sums over the
    flipped window in row-major order, rounded to float32 as scipy's output is."""
    kh, kw = window.shape
    h, w = image.shape
    padded = np.pad(image.astype(np.float64), ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge")
    flipped = window[::-1, ::-1]
    acc = np.zeros((h, w))
    for i in range(kh):
        for j in range(kw):
            acc += padded[i : i + h, j : j + w] * flipped[i, j]
    return acc.astype(np.float32)


def _normalised(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted, contrast-normalised coefficients (the paper's Eq. 1), in float32."""
    mu = _local_mean(image, window)
    sigma = np.sqrt(np.abs(_local_mean(np.square(image), window) - np.square(mu)))
    return (image - mu) / (sigma + np.float32(1))


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching AGGD fit of each row of float32 ``x``: (shape, left scale, right scale, mean factor).

    The moments are float32 means of the selected values, row by row, exactly as BasicSR takes them:
    vectorised float64 sums moved NIQE by up to 1e-3 (a fit's shape is the nearest point of a 0.001
    grid, and float32 rounding decides near-ties); with this loop NIQE of a 2048x1536 photo takes
    about 2 s on a busy 2-core CPU. A row without negative or positive values has no fit: NaN
    scales, and the first grid shape (0.2), which is what ``argmin`` over an all-NaN distance returns.
    """
    shape, ratio, to_scale, mean_factor = _aggd_table()
    best = np.zeros(len(x), dtype=np.int64)
    left = np.empty(len(x))
    right = np.empty(len(x))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no values is NaN, as intended
        for i, row in enumerate(x):
            sq = row * row
            lo = np.sqrt(np.mean(sq[row < 0]))
            hi = np.sqrt(np.mean(sq[row > 0]))
            g = lo / hi
            rhat = np.mean(np.abs(row)) ** 2 / np.mean(sq)
            rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
            best[i] = np.argmin((ratio - rnorm) ** 2)
            left[i], right[i] = lo, hi
    return shape[best], left * to_scale[best], right * to_scale[best], mean_factor[best]


def _block_features(norm: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The 18 NIQE features of each block of a normalised image split into ``rows`` x ``cols`` blocks,
    blocks ordered down each column first, as BasicSR loops."""
    bh, bw = norm.shape[0] // rows, norm.shape[1] // cols
    blocks = norm.reshape(rows, bh, cols, bw).transpose(2, 0, 1, 3).reshape(rows * cols, bh, bw)
    a, bl, br, _ = _aggd_fit(blocks.reshape(len(blocks), -1))
    feats = [a, (bl + br) / 2]
    for shift in _SHIFTS:
        # products of neighbours in float32 like BasicSR, wrapping around inside each block (np.roll)
        prod = blocks * np.roll(blocks, shift, axis=(1, 2))
        a, bl, br, m = _aggd_fit(prod.reshape(len(blocks), -1))
        feats += [a, (br - bl) * m, bl, br]
    return np.stack(feats, axis=1)


def niqe(image: np.ndarray, *, crop_border: int = 0) -> float:
    """NIQE of an image (lower is more natural), equal to BasicSR's ``calculate_niqe(img, crop_border,
    input_order='HWC', convert_to='y')`` on the same pixels.

    ``image``: (H, W, 3) RGB or (H, W) grey, uint8 or float on the 0-255 scale. RGB is measured on
    MATLAB's Y channel; the image is cut to whole 96x96 blocks and measured at full and half size
    against the pristine model shipped in ``lle_cli/data`` (Apache-2.0, from BasicSR). Returns NaN
    when no block has texture to fit (a flat image); raises ``ValueError`` for images smaller than
    two blocks, where the model's covariance is undefined.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"niqe takes uint8 images or floats on the 0-255 scale, not {a.dtype}; convert to 8 bits first")
    if a.ndim == 3 and a.shape[2] == 3:
        y = y_channel(a)
    elif a.ndim == 2:
        y = a.astype(np.float32).round()
    else:
        raise ValueError(f"niqe takes an (H, W, 3) RGB or (H, W) grey image, not shape {a.shape}")
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    rows, cols = y.shape[0] // NIQE_BLOCK, y.shape[1] // NIQE_BLOCK
    if rows * cols < 2:
        raise ValueError(
            f"NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks; this image is {y.shape[1]}x{y.shape[0]} pixels"
        )
    mu_pris, cov_pris, window = _niqe_model()
    y = y[: rows * NIQE_BLOCK, : cols * NIQE_BLOCK]
    full = _block_features(_normalised(y, window), rows, cols)
    half_image = imresize_half(y / np.float32(255)) * np.float32(255)
    half = _block_features(_normalised(half_image, window), rows, cols)
    feats = np.concatenate([full, half], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: the result is NaN, said below
        mu = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if len(complete) < 2 or not np.isfinite(mu).all():
        return math.nan
    cov = np.cov(complete, rowvar=False)
    d = mu_pris - mu
    quality = d @ np.linalg.pinv((cov_pris + cov) / 2) @ d.T
    return float(np.sqrt(np.squeeze(quality)))


# ---------------------------------------------------------------------------------------------
# Optional learned metrics (LPIPS, no-reference): libraries and weights must already be here.


class MetricUnavailableError(UsageError):
    """An optional metric's library or weights are not on this machine; the message says how to add them."""


class _DownloadBlocked(Exception):
    def __init__(self, url: str | None, dst: str | None) -> None:
        super().__init__(url or "a network connection")
        self.url, self.dst = url, dst


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Inside this block any attempt to download (torch.hub or a raw socket) raises ``_DownloadBlocked``.

    Metric libraries fetch their weights on first use; lle must never do that silently. The
    torch.hub hook is patched wherever a loaded module bound it by name, so the error can say
    which file was wanted and where it belongs.
    """
    import torch.hub as hub

    original = hub.download_url_to_file

    def blocked(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise _DownloadBlocked(url, dst)

    def refuse_connect(self: socket.socket, address: object) -> None:
        raise _DownloadBlocked(None, None)

    patched = [m for m in list(sys.modules.values()) if getattr(m, "download_url_to_file", None) is original]
    for m in patched:
        m.download_url_to_file = blocked
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect = refuse_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse_connect  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
        for m in patched:
            m.download_url_to_file = original


def _blocked_message(what: str, e: _DownloadBlocked) -> str:
    if e.url:
        return (
            f"{what} needs weights that are not on this machine ({e.url}); lle never downloads silently: "
            f"download that file yourself to {e.dst} and run again"
        )
    return f"{what} tried to download its weights; lle never downloads silently: put them in the library's cache first"


def load_lpips(device: torch.device | str = "cpu") -> Callable[[np.ndarray, np.ndarray], float]:
    """LPIPS (AlexNet, v0.1; Zhang et al. 2018, as LLFlow's ``Measure`` uses) on two uint8 RGB images."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        raise MetricUnavailableError(
            "--lpips needs the optional `lpips` package: pip install lpips (its AlexNet weights must then be in torch hub's cache)"
        ) from None
    try:
        with no_downloads(), contextlib.redirect_stdout(sys.stderr):
            net = lpips.LPIPS(net="alex", verbose=False).eval().to(device)
    except _DownloadBlocked as e:
        raise MetricUnavailableError(_blocked_message("LPIPS", e)) from None

    def score(a: np.ndarray, b: np.ndarray) -> float:
        def t(x: np.ndarray) -> torch.Tensor:  # [-1, 1], as the LPIPS authors' tools feed it
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None].to(device) / 127.5 - 1

        with torch.inference_mode():
            return float(net(t(a), t(b)).item())

    return score


def load_no_reference(name: str, device: torch.device | str = "cpu") -> tuple[Callable[[np.ndarray], float], bool]:
    """A no-reference metric (NIQE, BRISQUE, ...) from ``pyiqa``: ``(score(uint8 rgb), lower_is_better)``."""
    try:
        import pyiqa  # type: ignore[import-not-found]
    except ImportError:
        raise MetricUnavailableError(
            f"--no-ref {name} needs the optional `pyiqa` package (pip install pyiqa) and its weights in its cache"
        ) from None
    known = set(pyiqa.list_models(metric_mode="NR"))
    if name not in known:
        raise MetricUnavailableError(f"--no-ref {name}: not a pyiqa no-reference metric; try one of {', '.join(sorted(known)[:12])}")
    try:
        with no_downloads(), contextlib.redirect_stdout(sys.stderr):
            metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False)
    except _DownloadBlocked as e:
        raise MetricUnavailableError(_blocked_message(name, e)) from None

    def score(rgb: np.ndarray) -> float:
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 255
        with torch.inference_mode():
            return float(metric(x.to(device)).item())

    return score, bool(getattr(metric, "lower_better", False))
