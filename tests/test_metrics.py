"""Metrics against reference implementations: hand-computed values, and scikit-image / OpenCV results
recorded when these tests were written (scikit-image 0.26.0, opencv-python-headless 4.10.0 and 5.0.0)."""

from __future__ import annotations

import http.server
import math
import threading
import urllib.request

import numpy as np
import pytest
import torch

from lle_cli.metrics import (
    MetricUnavailableError,
    _DownloadBlocked,
    grey_float,
    grey_u8,
    load_lpips,
    load_no_reference,
    no_downloads,
    psnr,
    quantise,
    scale_to_mean,
    ssim,
    ssim_columns,
)


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic 8-bit RGB test image (gradients plus hashed noise), the same on every platform."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    noise = ((y * 7919 + x * 104729 + c * 1299709 + seed * 15485863) * 2654435761 >> 11) % 61
    return ((x * 5 + y * 3 + c * 40 + noise + seed * 11) % 256).astype(np.uint8)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    a = pattern(20, 24, 1)
    b = ((a.astype(int) * 3 + pattern(20, 24, 2).astype(int)) // 4).astype(np.uint8)  # correlated with a
    return a, b


# skimage.metrics.peak_signal_noise_ratio(b, a) and structural_similarity(a, b, channel_axis=-1)
SKIMAGE_PSNR = 24.236447725807324
SKIMAGE_SSIM_RGB = 0.9187292651817905
# structural_similarity on cv2.cvtColor(., COLOR_RGB2GRAY) images: 2-D, and with channel_axis=-1
# (what scikit-image 0.18's multichannel=True does to a 2-D image: LLFlow's grey SSIM)
SKIMAGE_SSIM_GREY_2D = 0.931277219782516
SKIMAGE_SSIM_GREY_COLUMNS = 0.8893686855644488
CV2_GREY_SUM = 73676  # cv2.cvtColor(a, COLOR_RGB2GRAY).sum()
CV2_GREY_ROW0 = [72, 91, 91, 73, 85, 103, 122, 122]
# cv2.cvtColor(a.astype(float32), COLOR_BGR2GRAY).mean() on an RGB array (LLFlow's mean_gt, times 255)
CV2_BGR2GRAY_MEAN = 161.40589904785156


def test_psnr_matches_scikit_image_and_hand_values(pair) -> None:
    a, b = pair
    assert psnr(b, a) == pytest.approx(SKIMAGE_PSNR, abs=1e-12)
    zeros, tens = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 10, np.uint8)
    assert psnr(zeros, tens) == pytest.approx(20 * math.log10(255 / 10), abs=1e-12)  # MSE = 100
    assert psnr(a, a) == math.inf


def test_ssim_rgb_matches_scikit_image(pair) -> None:
    a, b = pair
    assert ssim(a, b) == pytest.approx(SKIMAGE_SSIM_RGB, abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    # no variance anywhere: SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1) * (C2 / C2)
    x, y = np.full((9, 9), 100.0), np.full((9, 9), 50.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y) == pytest.approx((2 * 100 * 50 + c1) / (100**2 + 50**2 + c1), abs=1e-12)


def test_grey_ssim_2d_and_columns_match_scikit_image(pair) -> None:
    a, b = pair
    ga, gb = grey_u8(a), grey_u8(b)
    assert ssim(ga, gb) == pytest.approx(SKIMAGE_SSIM_GREY_2D, abs=1e-12)
    assert ssim_columns(ga, gb) == pytest.approx(SKIMAGE_SSIM_GREY_COLUMNS, abs=1e-12)
    assert abs(ssim(ga, gb) - ssim_columns(ga, gb)) > 0.01  # the two readings of "grey SSIM" really differ


def test_ssim_columns_only_looks_down_columns() -> None:
    # shuffling whole columns (the same permutation in both images) cannot change a per-column average
    a, b = pattern(16, 10, 3)[..., 0], pattern(16, 10, 4)[..., 1]
    perm = np.array([3, 7, 1, 0, 9, 2, 8, 5, 4, 6])
    assert ssim_columns(a[:, perm], b[:, perm]) == pytest.approx(ssim_columns(a, b), abs=1e-12)
    assert ssim(a[:, perm], b[:, perm]) != pytest.approx(ssim(a, b), abs=1e-6)


def test_ssim_rejects_mismatched_and_tiny_images() -> None:
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((6, 8, 3)), np.zeros((6, 8, 3)))


def test_grey_conversion_matches_opencv(pair) -> None:
    a, _ = pair
    g = grey_u8(a)
    assert g.dtype == np.uint8 and int(g.astype(int).sum()) == CV2_GREY_SUM and g[0, :8].tolist() == CV2_GREY_ROW0
    # colours where a 14-bit fixed-point rounding would give one level less than OpenCV's wheels
    rgb = np.array([[[0, 0, 250], [0, 7, 135], [0, 9, 230], [0, 17, 180], [0, 26, 160]]], np.uint8)
    assert grey_u8(rgb).tolist() == [[28, 19, 31, 30, 33]]
    assert grey_u8(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)).tolist() == [[255, 0]]
    # LLFlow's BGR2GRAY on an RGB array is the BT.601 weights applied to the channels reversed
    assert grey_float(a[..., ::-1]).mean() == pytest.approx(CV2_BGR2GRAY_MEAN, abs=1e-3)


def test_quantise_round_half_up_and_truncate() -> None:
    x = np.array([0.0, 0.5 / 255, 0.49 / 255, 0.999 / 255, 1.0, 1.2, -0.1], np.float32)
    assert quantise(x, "round").tolist() == [0, 1, 0, 1, 255, 255, 0]
    assert quantise(x, "truncate").tolist() == [0, 0, 0, 0, 255, 255, 0]
    with pytest.raises(ValueError):
        quantise(x, "nearest")


def test_scale_to_mean() -> None:
    x = np.array([[[0.2, 0.4, 0.6]]], np.float32)
    y, gain = scale_to_mean(x, 0.4, 0.6)
    assert gain == pytest.approx(1.5) and y.ravel().tolist() == pytest.approx([0.3, 0.6, 0.9])
    y, gain = scale_to_mean(x, 0.4, 1.2)
    assert y.max() == 1.0  # clipped
    y, gain = scale_to_mean(np.zeros_like(x), 0.0, 0.5)
    assert math.isnan(gain) and not y.any()


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"weights")

    def log_message(self, *args: object) -> None:
        pass


def test_no_downloads_blocks_torch_hub_and_sockets_then_restores(tmp_path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/alexnet.pth"
    try:
        with no_downloads():
            with pytest.raises(_DownloadBlocked) as e:
                torch.hub.load_state_dict_from_url(url, model_dir=str(tmp_path))
            assert e.value.url == url and e.value.dst.startswith(str(tmp_path))
            with pytest.raises(_DownloadBlocked):
                urllib.request.urlopen(url, timeout=5)
        assert _Counter.hits == 0 and not any(tmp_path.iterdir())
        assert urllib.request.urlopen(url, timeout=5).read() == b"weights"  # sockets work again afterwards
        assert _Counter.hits == 1
    finally:
        server.shutdown()


def test_optional_metrics_say_what_to_install() -> None:
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(MetricUnavailableError, match="pip install"):
            load_lpips()
    try:
        import pyiqa  # noqa: F401
    except ImportError:
        with pytest.raises(MetricUnavailableError, match="pyiqa"):
            load_no_reference("niqe")


def test_block_ratio_finds_an_8_pixel_grid() -> None:
    from lle_cli.metrics import block_ratio

    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(64, 64, 3)), axis=1) + np.cumsum(rng.normal(size=(64, 64, 3)), axis=0)
    assert 0.85 < block_ratio(smooth) < 1.15
    blocks = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255 + rng.normal(0, 2, (64, 64, 3))
    assert block_ratio(blocks) > 5
    shifted = np.roll(blocks, 4, axis=(0, 1))  # the same squares off the grid: steps now fall off it
    assert block_ratio(shifted) < 0.5
    assert np.isnan(block_ratio(np.zeros((16, 16, 3))))
