"""Full-reference quality metrics on 8-bit images, as image-enhancement papers report them.

PSNR over all pixels and channels. SSIM (Wang et al. 2004) in the variant most LOL numbers are
reported with (scikit-image's default): a 7x7 uniform window, sample covariance, K1 = 0.01,
K2 = 0.03, per RGB channel on the valid region, averaged. With it the official Zero-DCE weights
score 14.86 dB / 0.562 on the 15 LOL evaluation pairs, the figures our issue tracker quotes.

The other pieces an evaluation protocol is made of live here too, as pure functions: the grey
conversion, the column-wise SSIM that LLFlow's published grey SSIM actually is, quantisation to
8 bits and the mean-brightness alignment. Which of them a protocol uses, and why, is decided in
``lle_cli.evaluate``. LPIPS and no-reference metrics come from optional libraries whose weights
must already be on disk: ``no_downloads`` turns any download attempt into a clear error.
"""

from __future__ import annotations

import contextlib
import math
import socket
import sys
from collections.abc import Callable, Iterator

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
