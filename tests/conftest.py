"""Shared fixtures. Tests that need ../shared skip with a reason, or fail when LLE_REQUIRE_SHARED=1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("LLE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))

# local file names of the authors' checkpoints in ../shared/upstream/weights, by registry name
UPSTREAM_FILES = {
    "rave.paired": "rave_paired.pth",
    "rave.unpaired": "rave_unpaired.pth",
    "rave.unpaired-shifted": "rave_unpaired_shifted.pth",
    "clip-lit.paired": "clip_lit_paired.pth",
    "clip-lit.unpaired": "clip_lit_unpaired.pth",
    "clip-lit.official": "clip_lit_official.pth",
    "clip-lit-latent.paired": "clip_lit_latent_paired.pth",
    "clip-lit-latent.unpaired": "clip_lit_latent_unpaired.pth",
    "scl-lle.official": "scl_lle.pth",
    "zero-dce.official": "zero_dce.pth",
}


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip (fail under LLE_REQUIRE_SHARED=1) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"{p} is missing (the shared fixtures live in ../shared beside the checkout)"
        if os.environ.get("LLE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and LLE_REQUIRE_SHARED=1")
        pytest.skip(msg)
    return p


@pytest.fixture(autouse=True)
def lle_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty cache: tests never touch the user's ~/.cache/lle."""
    home = tmp_path_factory.mktemp("lle_home")
    monkeypatch.setenv("LLE_HOME", str(home))
    # never reach the real hub from a test: tests that exercise downloads serve them on 127.0.0.1
    # and set their own HF_* variables
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    return home


@pytest.fixture(autouse=True)
def _threads_and_seed():
    # seeded so that a test's random inputs are the same on every run (no flaky tolerances)
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
