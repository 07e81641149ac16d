"""The embedded LLFlow that `lle sample` uses by default: offline, verified, and with the paper's Fig. 6
brightness property (a constant latent offset moves brightness monotonically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import api
from lle_cli.cli.main import main
from lle_cli.cli.sample import DEFAULT_MODEL
from lle_cli.loading import embedded_path
from lle_cli.registry import get_registry
from lle_cli.weights import load_safetensors, sha256_file

from .conftest import shared_path

REPO = Path(__file__).resolve().parents[1]
OFFSETS = (-0.4, -0.2, 0.0, 0.2, 0.4)
DEMO_MODELS = ("llflow.lle-synth-rqs", "llflow.lle-synth-affine")


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demonstration_flows_are_embedded_fp16_and_verified(name) -> None:
    entry = get_registry().resolve(name)
    path = embedded_path(entry)
    assert path is not None and sha256_file(path) == entry.embedded_sha256
    assert {v.dtype for v in load_safetensors(path).values()} == {__import__("torch").float16}
    assert "demonstration" in entry.title.lower() and "synthetic" in entry.training_data.lower()
    model = api.load_model(name, device="cpu")  # fresh LLE_HOME: nothing cached, nothing downloaded
    assert model.weights_source == "embedded"
    assert all(p.dtype == __import__("torch").float32 for p in model.module.parameters())  # upcast on load


def test_sample_default_is_the_embedded_rqs_flow() -> None:
    entry = get_registry().resolve(DEFAULT_MODEL)
    assert entry.name == "llflow.lle-synth-rqs" and entry.architecture["coupling"] == "rqs"


def test_sample_without_model_works_offline(tmp_path, capsys) -> None:
    src = tmp_path / "dark.png"
    dark = np.asarray(Image.open(REPO / "examples" / "dark_street.png").convert("RGB"))[:64, :96]
    Image.fromarray(dark).save(src)
    out = tmp_path / "out"
    assert main(["sample", str(src), "--n", "3", "--seed", "0", "-o", str(out), "-q", "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.glob("dark_sample*.png"))
    assert len(written) == 3
    imgs = [np.asarray(Image.open(out / w), dtype=float) for w in written]
    assert not np.array_equal(imgs[0], imgs[1])  # tau 1: different latents give different images
    assert all(i.mean() > dark.mean() for i in imgs)  # and they enhance


_AFFINE_NOT_MONOTONIC = pytest.mark.xfail(
    strict=True,
    reason="known shortfall of the affine demonstration weights: at full size one LOL image (748.png) brightens "
    "by 0.001 between offsets 0 and 0.2 against its otherwise decreasing trend",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llflow.lle-synth-rqs", pytest.param("llflow.lle-synth-affine", marks=_AFFINE_NOT_MONOTONIC)])
def test_z_offset_moves_brightness_monotonically_on_every_lol_image(name) -> None:
    """Paper Fig. 6: z = g(x) + offset at tau 0, offsets -0.4 .. 0.4, every LOL eval15 image at full size.
    The RQS flow (the default of ``lle sample``) brightens with the offset as in the paper. The affine
    one learnt the opposite orientation (a larger offset gives a darker image) and misses on one image.
    The property tested is strict monotonicity in one direction shared by all images."""
    model = api.load_model(name, device="cpu")
    low = sorted(shared_path("data", "lol_eval15", "low").glob("*.png"))
    assert len(low) == 15
    directions = set()
    for f in low:
        x = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        got = api.sample(model, x, n=1, taus=(0.0,), offsets=OFFSETS, seed=0)
        b = [s.stats.mean_brightness for s in sorted(got.samples, key=lambda s: s.offset)]
        steps = np.sign(np.diff(b))
        assert abs(steps.sum()) == len(OFFSETS) - 1, f"{f.name}: brightness {b} is not monotonic in the offset"
        directions.add(int(steps[0]))
    assert len(directions) == 1
