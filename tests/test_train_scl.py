"""`lle train scl-lle`: SCL-LLE's losses by hand, labels, VGG/segmenter loading, training and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lle_cli.cli.main import main
from lle_cli.errors import InputError, WeightsError
from lle_cli.losses_scl import (
    feature_preservation,
    gram_distance,
    gram_matrix,
    mean_distance,
    segmentation_cross_entropy,
    semantic_brightness_consistency,
    triplet_hinge,
)
from lle_cli.models.zero_dce import ZeroDCE
from lle_cli.train.scl_lle import (
    SegSpec,
    SclTrainConfig,
    VggFeatures,
    VggSpec,
    cityscapes_train_ids,
    load_segmenter,
    load_vgg,
    match_labels,
    train_scl_lle,
)
from lle_cli.weights import load_safetensors, save_safetensors

TINY_WIDTHS = (4, 8, 8, 16)


def test_gram_and_distances_by_hand() -> None:
    f = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # C=2 channels of 2 pixels
    # G = f f^T / (C H W) = [[5, 2], [2, 1]] / 4
    assert torch.allclose(gram_matrix(f), torch.tensor([[[5.0, 2.0], [2.0, 1.0]]]) / 4)
    g = torch.zeros(1, 2, 1, 2)
    assert gram_distance([f], [g]).item() == pytest.approx((25 + 4 + 4 + 1) / 16)
    a, b = torch.full((2, 3, 2, 2), 0.5), torch.zeros(2, 3, 2, 2)
    b[1] = 0.8
    assert torch.allclose(mean_distance(a, b), torch.tensor([0.5, 0.3]))
    # Eq. 5 hinge per sample, then the batch mean: max(0.1 - 0.5 + 0.3, 0) = 0 and max(0.4 - 0.1 + 0.3, 0) = 0.6
    assert triplet_hinge(torch.tensor([0.1, 0.4]), torch.tensor([0.5, 0.1]), 0.3).item() == pytest.approx(0.3)


def test_semantic_brightness_consistency_by_hand() -> None:
    img = torch.zeros(1, 3, 2, 2)
    img[0, :, 0, :] = torch.tensor([0.2, 0.6]).view(1, 2).expand(3, 2)  # top row, class 0: brightness 0.2, 0.6
    img[0, :, 1, :] = 0.9  # bottom row, class 1: constant
    labels = torch.tensor([[[0, 0], [1, 1]]])
    # class 0 mean 0.4: deviations 0.04 + 0.04; class 1: 0; over 4 pixels
    assert semantic_brightness_consistency(img, labels).item() == pytest.approx(0.08 / 4)
    labels_void = torch.tensor([[[0, 255], [1, 1]]])  # the void pixel takes no part: class 0 is one pixel
    assert semantic_brightness_consistency(img, labels_void).item() == pytest.approx(0.0, abs=1e-7)


def test_cross_entropy_and_feature_preservation() -> None:
    logits = torch.randn(2, 19, 4, 4)
    labels = torch.randint(0, 19, (2, 4, 4))
    labels[0, 0, 0] = 255
    assert torch.isclose(segmentation_cross_entropy(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    up = segmentation_cross_entropy(torch.randn(1, 19, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long))
    assert torch.isfinite(up)  # logits are resized to the labels
    a, b = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2) * 2
    assert feature_preservation(a, b).item() == pytest.approx(4.0)


def test_cityscapes_label_ids_become_train_ids() -> None:
    ids = np.array([[7, 8, 26], [0, 33, 255]], dtype=np.uint8)  # road, sidewalk, car / unlabeled, bicycle, void
    assert cityscapes_train_ids(ids, "labelIds").tolist() == [[0, 1, 13], [255, 18, 255]]
    assert cityscapes_train_ids(ids, "trainIds").tolist() == ids.tolist()


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def data(tmp_path, rng) -> dict[str, Path]:
    for i in range(3):
        stem = f"aachen_00000{i}_000019"
        _png(tmp_path / "img" / "aachen" / f"{stem}_leftImg8bit.png", (rng.random((36, 40, 3)) * 50).astype(np.uint8))
        lab = np.full((36, 40), 7, np.uint8)  # road ...
        lab[:16] = 23  # ... under the sky
        _png(tmp_path / "lab" / "aachen" / f"{stem}_gtFine_labelIds.png", lab)
        _png(tmp_path / "lab" / "aachen" / f"{stem}_gtFine_color.png", (rng.random((36, 40, 3)) * 255).astype(np.uint8))
        _png(tmp_path / "pos" / f"{i}.png", (rng.random((30, 30, 3)) * 100 + 120).astype(np.uint8))
        _png(tmp_path / "neg" / f"{i}.png", (rng.random((30, 30, 3)) * 25).astype(np.uint8))
    return {k: tmp_path / k for k in ("img", "lab", "pos", "neg")}


def test_labels_match_on_cityscapes_names(data, tmp_path) -> None:
    from lle_cli.clip import list_images

    imgs = list_images(data["img"])
    labels = match_labels(imgs, data["lab"])
    assert [p.name for p in labels] == [f"aachen_00000{i}_000019_gtFine_labelIds.png" for i in range(3)]
    (data["lab"] / "aachen" / "aachen_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(InputError, match="aachen_000001_000019"):
        match_labels(imgs, data["lab"])


def test_vgg_taps_and_weights_file(tmp_path) -> None:
    net = load_vgg(VggSpec(weights="random", widths=TINY_WIDTHS))
    taps = net(torch.rand(1, 3, 32, 32))
    assert [t.shape[1] for t in taps] == [4, 8, 8, 16] and [t.shape[-1] for t in taps] == [32, 16, 8, 4]
    # a torchvision-style state dict ("features.N.*" plus a classifier) loads into the features
    state = {f"features.{k}": v + 1 for k, v in VggFeatures(TINY_WIDTHS).features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg.safetensors"
    save_safetensors(state, path)
    loaded = load_vgg(VggSpec(weights=str(path), widths=TINY_WIDTHS))
    assert torch.equal(loaded.features[0].weight, state["features.0.weight"])
    with pytest.raises(WeightsError, match="not VGG-16 weights"):
        load_vgg(VggSpec(weights=str(path), widths=(4, 8, 8, 32)))  # other widths do not fit the file


def test_vgg_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch) -> None:
    from torchvision.models import VGG16_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_a, **_k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(WeightsError, match="--vgg-weights FILE"):
        load_vgg(VggSpec())


def test_segmenter_weights_must_fit(tmp_path) -> None:
    assert load_segmenter(SegSpec(weights=None)) is None  # no weights: the cross-entropy term is off
    path = tmp_path / "seg.safetensors"
    save_safetensors({"backbone.nope": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="19 classes"):
        load_segmenter(SegSpec("lraspp_mobilenet_v3_large", str(path)))


def _cfg(**kw) -> SclTrainConfig:
    base = dict(steps=4, batch_size=2, crop=32, lr=1e-3, log_every=1, checkpoint_every=2,
                vgg=VggSpec(weights="random", widths=TINY_WIDTHS), segmenter=SegSpec("lraspp_mobilenet_v3_large", None))
    base.update(kw)
    return SclTrainConfig(**base)


def test_training_with_labels_and_segmenter_reduces_the_loss(data, tmp_path) -> None:
    cfg = _cfg(steps=3, segmenter=SegSpec("lraspp_mobilenet_v3_large", "random"))
    messages: list[str] = []
    result = train_scl_lle(data["img"], data["pos"], data["neg"], tmp_path / "o.safetensors", cfg, labels=data["lab"],
                           run_dir=tmp_path / "run", log=messages.append)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"semantic", "segmentation", "contrast_gram", "contrast_mean", "feature", "color", "smoothness"} <= rows[0].keys()
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["contrast_mean"] < rows[0]["contrast_mean"]
    assert result.info == {"semantic": True, "segmentation": True} and not messages
    assert load_safetensors(result.output).keys() == ZeroDCE().state_dict().keys()


def test_resume_without_labels_says_the_semantic_term_is_off(data, tmp_path) -> None:
    messages: list[str] = []
    straight = train_scl_lle(data["img"], data["pos"], data["neg"], tmp_path / "a.safetensors", _cfg(steps=3),
                             run_dir=tmp_path / "ra", log=messages.append)
    assert any("semantic" in m and "off" in m for m in messages)
    train_scl_lle(data["img"], data["pos"], data["neg"], tmp_path / "b.safetensors", _cfg(steps=2), run_dir=tmp_path / "rb")
    resumed = train_scl_lle(data["img"], data["pos"], data["neg"], tmp_path / "c.safetensors", _cfg(steps=3),
                            run_dir=tmp_path / "rb", resume=tmp_path / "rb")
    a, c = load_safetensors(straight.output), load_safetensors(resumed.output)
    assert resumed.resumed_from == 2 and all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_command_without_labels(data, tmp_path, capsys) -> None:
    out = tmp_path / "scl.safetensors"
    args = ["train", "scl-lle", "--images", data["img"], "--positives", data["pos"], "--negatives", data["neg"],
            "-o", out, "--steps", 1, "--crop", 32, "--vgg-weights", "random", "--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "semantic brightness-consistency term (Eq. 6-7) is off" in captured.err
    code = main(["enhance", str(next(data["pos"].iterdir())), "--model", "scl-lle", "--weights", str(out),
                 "-o", str(tmp_path / "e.png"), "--device", "cpu", "--quiet"])
    assert code == 0 and (tmp_path / "e.png").is_file()
