"""Train SCL-LLE (Liang et al., AAAI 2022): the Zero-DCE curve network with semantically contrastive losses.

Per step (paper "Methodology"; weights of the authors' ``train.py`` where the paper gives none):

* contrastive brightness restoration (Eq. 2-5): VGG-16 Gram matrices of relu1_2 and relu2_2, margin
  0.3, weight 5; image means, margin 0.04, weight 10. Positives and negatives are drawn at random every
  step, unpaired with the input and with each other.
* semantic brightness consistency (Eq. 6-7) with the ground-truth labels (Cityscapes trainIds; ``labelIds``
  files are converted), weight 1, plus the cross-entropy of a frozen torchvision segmentation network on
  the enhanced image, weight 1 (the gradient reaches the curve network through the frozen segmenter, as
  the paper describes; the authors' script detaches it). Without labels the whole term is off; without
  segmentation weights only the cross-entropy is.
* feature preservation (Eq. 8, VGG-16 relu4_3, weight 1), colour constancy (weight 8) and illumination
  smoothness (lambda = 200) of Eq. 9, in Zero-DCE's code form (``lle_cli.losses``).

VGG-16 and the segmenter are torchvision architectures. VGG weights come from torchvision's cache
(``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``, downloaded once if missing) or a local file; the
segmenter needs a local Cityscapes-trained (19 classes) checkpoint of the chosen architecture, because
torchvision ships no Cityscapes weights. Both accept ``"random"`` (tests, smoke runs). Images are fed
to both networks with ImageNet normalisation. Adam (lr 1e-4, weight decay 1e-4), gradient norm clipped
to 0.1, batch 2, random 384x384 crops with horizontal flips; positives/negatives resized to 384x384.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..clip import list_images
from ..errors import InputError, UsageError, WeightsError
from ..losses import color_constancy, illumination_smoothness
from ..losses_scl import (
    IGNORE_INDEX,
    feature_preservation,
    gram_distance,
    mean_distance,
    segmentation_cross_entropy,
    semantic_brightness_consistency,
    triplet_hinge,
)
from ..models.zero_dce import ZeroDCE, ZeroDCEConfig
from ..weights import clean_state_dict, load_safetensors, sha256_file
from .common import (
    optimise,
    MetricsLog, RunOptions, all_reduce_mean, barrier, batch_indices, checkpoint_path, jsonable, open_run,
    prune_checkpoints, read_rgb, resume_training, run_distributed, save_checkpoint, save_trained_weights, step_generator,
    wrap_ddp,
)
from .rave import RESUMABLE, TrainResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "VggSpec",
    "SegSpec",
    "SclLossWeights",
    "SclTrainConfig",
    "VggFeatures",
    "load_vgg",
    "load_segmenter",
    "cityscapes_train_ids",
    "match_labels",
    "train_scl_lle",
    "SEGMENTERS",
]

RANDOM = "random"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name carries the sha256 prefix
SEGMENTERS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "lraspp_mobilenet_v3_large",
              "fcn_resnet50", "fcn_resnet101")
CITYSCAPES_CLASSES = 19

# Cityscapes labelId -> trainId (cityscapesScripts' labels.py); everything else is void (255)
_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                   26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _k, _v in _LABEL_TO_TRAIN.items():
    _LUT[_k] = _v


@dataclass(frozen=True)
class VggSpec:
    """VGG-16 features; ``weights``: None (torchvision's cache or download), a file, or ``"random"``."""

    weights: str | None = None
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # smaller for tests; 64..512 is VGG-16


@dataclass(frozen=True)
class SegSpec:
    """A torchvision segmentation architecture with 19 Cityscapes classes; no weights: CE term off."""

    arch: str = "deeplabv3_mobilenet_v3_large"
    weights: str | None = None


@dataclass(frozen=True)
class SclLossWeights:
    contrast_gram: float = 5.0
    contrast_mean: float = 10.0
    margin_gram: float = 0.3  # alpha of Eq. 5
    margin_mean: float = 0.04  # beta of Eq. 5
    semantic: float = 1.0
    segmentation: float = 1.0
    feature: float = 1.0
    color: float = 8.0
    smoothness: float = 200.0  # lambda of Eq. 9


@dataclass(frozen=True)
class SclTrainConfig:
    """Defaults: the paper's (50 epochs of the 2975 Cityscapes training images at batch 2)."""

    steps: int = 74_375
    batch_size: int = 2
    crop: int = 384
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    label_format: str = "auto"  # auto, labelIds or trainIds
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 20
    losses: SclLossWeights = field(default_factory=SclLossWeights)
    vgg: VggSpec = field(default_factory=VggSpec)
    segmenter: SegSpec = field(default_factory=SegSpec)
    model: ZeroDCEConfig = field(default_factory=ZeroDCEConfig)


# ---- frozen networks ----------------------------------------------------------------------------
class VggFeatures(nn.Module):
    """VGG-16's convolutional part up to relu4_3; ``forward`` returns relu1_2, relu2_2, relu3_3, relu4_3."""

    TAPS = (3, 8, 15, 22)

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        a, b, c, d = widths
        self.features = make_layers([a, a, "M", b, b, "M", c, c, c, "M", d, d, d], batch_norm=False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.TAPS:
                out.append(h)
        return out


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad pickle
        raise WeightsError(f"{path}: cannot be loaded as a weights-only PyTorch checkpoint ({type(e).__name__})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model_state"), dict):
        obj = obj["model_state"]
    return clean_state_dict(obj)


def load_vgg(spec: VggSpec | None = None, *, device: str | torch.device = "cpu") -> VggFeatures:
    """Frozen VGG-16 features with weights from ``spec`` (see ``VggSpec``)."""
    spec = spec or VggSpec()
    with torch.random.fork_rng(devices=[]):  # "random" weights are the same in every run (resume, ranks)
        torch.manual_seed(0)
        net = VggFeatures(spec.widths)
    if spec.weights == RANDOM:
        pass
    else:
        if spec.weights is not None:
            path = Path(spec.weights)
            if not path.is_file():
                raise WeightsError(f"{path}: no such VGG-16 weights file")
            state = _torch_load(path)
        else:
            path = Path(torch.hub.get_dir()) / "checkpoints" / _VGG16_FILE
            if not path.is_file():
                try:
                    from torchvision.models import VGG16_Weights

                    VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
                except Exception as e:  # offline, proxy, disk: all mean "not available"
                    raise WeightsError(
                        f"VGG-16 ImageNet weights are not in torchvision's cache ({path}) and could not be downloaded "
                        f"({type(e).__name__}); put {_VGG16_FILE} there or pass --vgg-weights FILE"
                    ) from e
            if not sha256_file(path).startswith(_VGG16_FILE.split("-")[1].split(".")[0]):
                raise WeightsError(f"{path}: sha256 does not match torchvision's VGG-16 weights; delete it and retry")
            state = _torch_load(path)
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        own = net.features.state_dict()
        missing = sorted(own.keys() - feats.keys())
        wrong = [k for k in own if k in feats and feats[k].shape != own[k].shape]
        if missing or wrong:
            raise WeightsError(f"{spec.weights or path}: not VGG-16 weights (missing or mis-shaped {(missing or wrong)[0]})")
        net.features.load_state_dict({k: feats[k] for k in own}, strict=True)
    return net.eval().requires_grad_(False).to(device)


def load_segmenter(spec: SegSpec, *, device: str | torch.device = "cpu") -> nn.Module | None:
    """Frozen torchvision segmenter with 19 classes, or None when ``spec.weights`` is None."""
    if spec.weights is None:
        return None
    if spec.arch not in SEGMENTERS:
        raise UsageError(f"--seg-model {spec.arch!r}: expected one of {', '.join(SEGMENTERS)}")
    from torchvision.models import segmentation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = getattr(segmentation, spec.arch)(weights=None, weights_backbone=None, num_classes=CITYSCAPES_CLASSES, aux_loss=False)
    if spec.weights != RANDOM:
        path = Path(spec.weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such segmentation weights file")
        state = {k: v for k, v in _torch_load(path).items() if not k.startswith("aux_classifier.")}
        own = net.state_dict()
        bad = sorted((own.keys() ^ state.keys()) | {k for k in own.keys() & state.keys() if own[k].shape != state[k].shape})
        if bad:
            raise WeightsError(
                f"{path}: does not fit torchvision's {spec.arch} with {CITYSCAPES_CLASSES} classes (first mismatch: {bad[0]}); "
                "pass a Cityscapes-trained checkpoint of that architecture or choose another --seg-model"
            )
        net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False).to(device)


# ---- data ----------------------------------------------------------------------------------------
_IMAGE_TAIL = re.compile(r"_leftImg8bit$")
_LABEL_TAIL = re.compile(r"(_gt(Fine|Coarse))?_(labelTrainIds|labelIds)$")


def _label_kind(path: Path) -> str | None:
    m = _LABEL_TAIL.search(path.stem)
    return m.group(3) if m else None


def match_labels(images: list[Path], labels_dir: Path) -> list[Path]:
    """The label file of each image, matched on the Cityscapes name stem (``city_000000_000019``).

    ``*_labelTrainIds.png`` wins over ``*_labelIds.png``; colour and instance maps are ignored; other
    files match on their plain stem.
    """
    found: dict[str, Path] = {}
    rank = {"labelTrainIds": 2, "labelIds": 1, None: 0}
    for p in list_images(labels_dir):
        if p.stem.endswith(("_color", "_instanceIds")):
            continue
        key = _LABEL_TAIL.sub("", p.stem)
        if key not in found or rank[_label_kind(p)] > rank[_label_kind(found[key])]:
            found[key] = p
    out = []
    for img in images:
        key = _IMAGE_TAIL.sub("", img.stem)
        if key not in found:
            raise InputError(f"{img}: no label in {labels_dir} (expected {key}_gtFine_labelIds.png or {key}.png); "
                             "add it or remove the image")
        out.append(found[key])
    return out


def cityscapes_train_ids(label: np.ndarray, kind: str) -> np.ndarray:
    """A label map as trainIds (0..18, 255 void); ``kind`` is labelIds or trainIds."""
    return _LUT[label] if kind == "labelIds" else label


def _read_label(path: Path, fmt: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except OSError as e:
        raise InputError(f"{path}: cannot read label map ({e})") from e
    if arr.ndim != 2:
        raise InputError(f"{path}: a label map must be a single-channel PNG of class ids (not a colour image)")
    arr = arr.astype(np.uint8)
    kind = _label_kind(path) if fmt == "auto" else fmt
    if kind is None:  # plain name: decide by the values present
        valid = arr[arr != IGNORE_INDEX]
        kind = "labelIds" if valid.size and int(valid.max()) >= CITYSCAPES_CLASSES else "labelTrainIds"
    return cityscapes_train_ids(arr, "labelIds" if kind == "labelIds" else "trainIds")


def _to_tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _crop_pair(path: Path, label_path: Path | None, fmt: str, crop: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    from PIL import Image

    im = read_rgb(path)
    lab = _read_label(label_path, fmt) if label_path is not None else None
    if lab is not None and lab.shape != (im.height, im.width):
        raise InputError(f"{label_path}: label is {lab.shape[1]}x{lab.shape[0]} but {path.name} is {im.width}x{im.height}")
    if min(im.size) < crop:  # upscale so that a crop fits
        s = crop / min(im.size)
        size = (max(crop, round(im.width * s)), max(crop, round(im.height * s)))
        im = im.resize(size, Image.Resampling.BICUBIC)
        if lab is not None:
            lab = np.asarray(Image.fromarray(lab).resize(size, Image.Resampling.NEAREST))
    x0 = int(torch.randint(0, im.width - crop + 1, (1,), generator=g))
    y0 = int(torch.randint(0, im.height - crop + 1, (1,), generator=g))
    flip = bool(torch.rand(1, generator=g) < 0.5)
    x = _to_tensor(im.crop((x0, y0, x0 + crop, y0 + crop)))
    y = torch.from_numpy(lab[y0 : y0 + crop, x0 : x0 + crop].astype(np.int64)) if lab is not None else None
    if flip:
        x = x.flip(-1)
        y = y.flip(-1) if y is not None else None
    return x, y


def _sample_resized(paths: list[Path], n: int, size: int, g: torch.Generator) -> torch.Tensor:
    from PIL import Image

    idx = torch.randint(0, len(paths), (n,), generator=g).tolist()
    return torch.stack([_to_tensor(read_rgb(paths[i]).resize((size, size), Image.Resampling.LANCZOS)) for i in idx])


class _CurvesAll(nn.Module):
    """Zero-DCE returning (enhanced, curve maps); a module so that DDP sees the forward pass."""

    def __init__(self, net: ZeroDCE) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, enhanced, curves = self.net.forward_all(x)
        return enhanced, curves


# ---- the trainer ---------------------------------------------------------------------------------
def train_scl_lle(
    images: Path,
    positives: Path,
    negatives: Path,
    output: Path,
    cfg: SclTrainConfig | None = None,
    *,
    labels: Path | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train the curve network on low-light ``images`` (with optional Cityscapes ``labels``).

    ``run``: ``run_dir``, ``resume``, ``device``, ``progress(step, total, loss)``, ``log`` (``RunOptions``).
    """
    cfg = cfg or SclTrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.crop < 16:
        raise UsageError("--steps and --batch-size must be positive and --crop at least 16")
    if cfg.label_format not in ("auto", "labelIds", "trainIds"):
        raise UsageError(f"--label-format {cfg.label_format!r}: expected auto, labelIds or trainIds")
    return run_distributed(
        lambda *a: _train(Path(images), Path(positives), Path(negatives), labels, cfg, *a), output, cfg.batch_size, run
    )


def _train(images, positives, negatives, labels, cfg, output, run_dir, resume, d, dev, local_batch, progress, say) -> TrainResult:
    files = list_images(images)
    pos_files, neg_files = list_images(positives), list_images(negatives)
    label_files = match_labels(files, Path(labels)) if labels is not None else None
    cfg_json = jsonable(asdict(cfg))
    ck = open_run(run_dir, resume, trainer="scl-lle", label="SCL-LLE", config=cfg_json, total_steps=cfg.steps, ignore=RESUMABLE)
    vgg = load_vgg(cfg.vgg, device=dev)
    seg = load_segmenter(cfg.segmenter, device=dev) if label_files is not None else None
    if label_files is None:
        say("no --labels: the semantic brightness-consistency term (Eq. 6-7) is off")
    elif seg is None:
        say("no --seg-weights: the segmentation cross-entropy of Eq. 7 is off (brightness consistency stays on)")
    w = cfg.losses
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = ZeroDCE(cfg.model)
        for m in net.modules():  # the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
    net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = resume_training(ck, "net", net, opt, say)
    model = wrap_ddp(_CurvesAll(net), d, dev)
    model.train()
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=d.is_main, resume_step=start if ck else None)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"trainer": "scl-lle", "config": cfg_json}, indent=2) + "\n")
    t0 = time.perf_counter()
    loss_value = math.nan
    for step in range(start + 1, cfg.steps + 1):
        g = step_generator(cfg.seed, step, d.rank)
        idx = batch_indices(len(files), step, local_batch, cfg.seed, d).tolist()
        pairs = [_crop_pair(files[i], label_files[i] if label_files else None, cfg.label_format, cfg.crop, g) for i in idx]
        x = torch.stack([p[0] for p in pairs]).to(dev)
        y = torch.stack([p[1] for p in pairs]).to(dev) if label_files else None
        pos = _sample_resized(pos_files, local_batch, cfg.crop, g).to(dev)
        neg = _sample_resized(neg_files, local_batch, cfg.crop, g).to(dev)
        enhanced, curves = model(x)
        fh = vgg(enhanced)
        with torch.no_grad():
            fp, fn, fx = vgg(pos), vgg(neg), vgg(x)
        parts = {
            "contrast_gram": triplet_hinge(gram_distance(fh[:2], fp[:2]), gram_distance(fh[:2], fn[:2]), w.margin_gram),
            "contrast_mean": triplet_hinge(mean_distance(enhanced, pos), mean_distance(enhanced, neg), w.margin_mean),
            "feature": feature_preservation(fx[3], fh[3]),
            "color": color_constancy(enhanced),
            "smoothness": illumination_smoothness(curves),
        }
        if y is not None:
            parts["semantic"] = semantic_brightness_consistency(enhanced, y)
            if seg is not None:
                logits = seg((enhanced - vgg.mean) / vgg.std)["out"]
                parts["segmentation"] = segmentation_cross_entropy(logits, y)
        loss = sum(getattr(w, k) * v for k, v in parts.items())
        loss_value = optimise(opt, loss, step, clip=net.parameters(), max_norm=cfg.grad_clip)
        if step % cfg.log_every == 0 or step == cfg.steps or step == start + 1:
            loss_value = all_reduce_mean(loss_value, d, dev)
            metrics.write(step, loss=loss_value, **{k: all_reduce_mean(float(v.detach()), d, dev) for k, v in parts.items()})
        if progress:
            progress(step, cfg.steps, loss_value)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if d.is_main:
                save_checkpoint(checkpoint_path(run_dir / "checkpoints", step), step=step, modules={"net": net},
                                optimizers={"net": opt}, meta={"trainer": "scl-lle", "config": cfg_json})
                prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
            barrier(d)
    seconds = time.perf_counter() - t0
    recipe = {
        "trainer": "scl-lle", "config": cfg_json, "images": len(files), "positives": len(pos_files),
        "negatives": len(neg_files), "labels": label_files is not None, "segmentation": seg is not None,
        "steps": cfg.steps, "seconds": round(seconds, 1),
    }
    if d.is_main:
        save_trained_weights(net.state_dict(), output, family="zero_dce", recipe=recipe)
    barrier(d)
    return TrainResult(output, run_dir, cfg.steps, seconds, loss_value, len(files), ck.step if ck else None,
                       {"semantic": label_files is not None, "segmentation": seg is not None})
