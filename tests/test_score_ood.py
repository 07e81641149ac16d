"""``lle score-ood`` and ``lle_cli.ood``: Mahalanobis OOD scores of LLFlow encoder features."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api, ood
from lle_cli.cli.main import main
from lle_cli.errors import ChecksumError, UsageError
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.registry import ManifestError, Registry, get_registry
from lle_cli.runner import LoadedModel
from lle_cli.sampling import sample_array
from lle_cli.weights import save_safetensors, sha256_file

TINY = LLFlowConfig(nf=8, nb=3, gc=8, K=1, hidden_channels=8, stack_blocks=(0, 2))
SMALL = LLFlowConfig(nf=32, nb=4, K=4, stack_blocks=(1,))  # llflow.lol-small's architecture


@pytest.fixture(autouse=True)
def _one_thread():
    # these inputs are tiny: a second thread only adds synchronisation (10x slower on a busy machine)
    torch.set_num_threads(1)


def _fresh(cfg: LLFlowConfig, seed: int = 1) -> LLFlow:
    """Random weights with data-initialised ActNorms (as tests/test_sample.py), then perturbed."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 24, 40, generator=g) * 0.25
    model = LLFlow(cfg)
    model.initialize_actnorms(low, (low * 4).clamp(0, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return model.eval()


def _loaded(module: torch.nn.Module, source: str = "test") -> LoadedModel:
    return LoadedModel(get_registry().resolve("llflow.lol-small"), module, torch.device("cpu"), torch.float32, source)


def _dark(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth dark photo-like image: a random dim colour, a gentle gradient and a little noise."""
    base = rng.random(3) * 0.15 + 0.02
    ramp = np.linspace(0.0, 0.05, w)[None, :, None]
    return np.clip(base + ramp + rng.normal(0, 0.02, (h, w, 3)), 0, 1).astype(np.float32)


def _noise(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    return rng.random((h, w, 3)).astype(np.float32)  # bright, saturated, no structure: nothing like the training inputs


def _save(rgb: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(path)
    return path


# -- pure math ------------------------------------------------------------------------------


def test_mahalanobis_equals_direct_numpy(rng) -> None:
    mix = rng.normal(size=(5, 5))
    x = rng.normal(size=(300, 5)) @ mix + rng.normal(size=5)
    for shrink in (0.0, 0.3, None):
        mean, cov, a, ridge = ood.fit_gaussian(x, shrink)
        s = np.cov(x, rowvar=False, bias=True)
        mu = np.trace(s) / 5
        np.testing.assert_allclose(cov, (1 - a) * s + (a * mu + ridge) * np.eye(5), rtol=1e-12, atol=1e-12)
        v = rng.normal(size=(7, 5)) * 3
        direct = np.sqrt(np.einsum("ij,jk,ik->i", v - mean, np.linalg.inv(cov), v - mean))
        got = ood.mahalanobis(v, mean, ood.cholesky_whitener(cov))
        np.testing.assert_allclose(got, direct, rtol=1e-10)
        assert got.dtype == np.float64
    assert ood.mahalanobis(mean[None], mean, ood.cholesky_whitener(cov))[0] == 0.0


def test_ledoit_wolf_matches_its_definition_and_rescues_few_samples(rng) -> None:
    x = rng.normal(size=(12, 4)) * np.array([1.0, 2.0, 0.5, 3.0])
    c = x - x.mean(0)
    n, d = c.shape
    s = c.T @ c / n
    mu = np.trace(s) / d
    delta2 = np.linalg.norm(s - mu * np.eye(d)) ** 2 / d
    beta2 = sum(np.linalg.norm(np.outer(r, r) - s) ** 2 for r in c) / n**2 / d
    assert ood.ledoit_wolf_shrinkage(c) == pytest.approx(min(beta2, delta2) / delta2, rel=1e-10)
    # many well-conditioned samples: little shrinkage; fewer samples than dimensions: strong, and invertible
    assert ood.ledoit_wolf_shrinkage(rng.normal(size=(5000, 4)) * [1, 2, 3, 4]) < 0.02
    few = rng.normal(size=(6, 40))
    _, cov, a, _ = ood.fit_gaussian(few)
    assert 0.1 < a <= 1.0 and np.linalg.eigvalsh(cov).min() > 0
    with pytest.raises(UsageError, match="at least 2 patches"):
        ood.fit_gaussian(few[:1])
    with pytest.raises(UsageError, match="do not vary"):
        ood.fit_gaussian(np.ones((5, 3)))
    with pytest.raises(UsageError, match="between 0 and 1"):
        ood.fit_gaussian(few, 1.5)


def test_patch_boxes_cover_the_image_with_full_patches() -> None:
    for h, w, p in [(100, 250, 100), (37, 64, 16), (10, 12, 100), (64, 64, 32)]:
        boxes = ood.patch_boxes(h, w, p)
        covered = np.zeros((h, w), dtype=bool)
        for y0, x0, y1, x1 in boxes:
            assert (y1 - y0, x1 - x0) == (min(p, h), min(p, w)) and 0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w
            covered[y0:y1, x0:x1] = True
        assert covered.all()
    assert len(ood.patch_boxes(100, 250, 100)) == 3 and len(ood.patch_boxes(64, 64, 32)) == 4
    with pytest.raises(UsageError):
        ood.patch_boxes(10, 10, 1)


def test_pool_boxes_averages_the_feature_pixels_under_each_box() -> None:
    fmap = torch.arange(2 * 6 * 8, dtype=torch.float32).view(2, 6, 8)
    boxes = np.array([[0, 0, 4, 4], [3, 5, 7, 9]])  # image pixels; the map is half resolution, offset (1, 1)
    got = ood.pool_boxes(fmap, boxes, scale=2, offset=(1, 1))
    np.testing.assert_allclose(got[0], fmap[:, 0:3, 0:3].double().mean((1, 2)).numpy())
    np.testing.assert_allclose(got[1], fmap[:, 2:4, 3:5].double().mean((1, 2)).numpy())


def test_correlations_pearson_and_spearman(rng) -> None:
    x = rng.random(20)
    y = 2 * x + rng.normal(0, 0.1, 20)
    r, _ = ood.correlations(x, y)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert ood.correlations(x, np.exp(5 * x))[1] == pytest.approx(1.0)  # monotone: rank correlation 1
    # ties get average ranks: (1, 2.5, 2.5, 4) vs (1, 3.5, 3.5, 2) -> 1.5 / 4.5
    assert ood.correlations([1, 2, 2, 3], [1, 3, 3, 2])[1] == pytest.approx(1 / 3)
    assert ood.correlations([1, 2], [2, 1]) == (None, None) and ood.correlations([1, 1, 1], [1, 2, 3])[0] is None


# -- features of an LLFlow model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    torch.manual_seed(0)
    return _loaded(_fresh(TINY))


def test_patch_features_are_the_pooled_rrdb_block_outputs(tiny, rng) -> None:
    rgb = _dark(rng, 37, 50)  # odd size: asymmetric padding
    spec = ood.FeatureSpec(blocks=(2, 0), patch_size=16)
    feats, boxes = ood.patch_features(tiny, rgb, spec)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    with torch.no_grad():
        _, pad = tiny.module.prepare(x)
        every = tiny.module.block_features(x)[0]  # all blocks, (nb * nf, H/2, W/2) of the padded image
    nf = TINY.nf
    want = np.concatenate([ood.pool_boxes(every[b * nf : (b + 1) * nf], boxes, scale=2, offset=(pad.top, pad.left)) for b in (2, 0)], 1)
    assert feats.shape == (len(boxes), 2 * nf) and len(boxes) == 12
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)
    assert ood.default_blocks(tiny) == (0, 2)  # the model's stacked blocks, as the paper (1, 3, 5, 7 for LOL-pc)
    with pytest.raises(UsageError, match="block indices"):
        ood.patch_features(tiny, rgb, ood.FeatureSpec(blocks=(5,), patch_size=16))


def test_fit_ranks_an_obviously_ood_image_above_in_distribution_ones(tiny, rng, tmp_path) -> None:
    train = [_save(_dark(rng), tmp_path / f"t{i}.png") for i in range(8)]
    stats = api.fit_ood(tiny, train, output=tmp_path / "s.safetensors", patch_size=16)
    assert stats.n_images == 8 and stats.n_patches == 8 * 12 and stats.dim == 2 * TINY.nf
    assert stats.regularisation == "ledoit-wolf" and 0 <= stats.shrinkage <= 1 and "5-fold" in stats.threshold_method
    assert stats.threshold == pytest.approx(np.percentile(stats.train_scores, 99))
    test_in = [_save(_dark(rng), tmp_path / f"in{i}.png") for i in range(3)]
    odd = _save(_noise(rng), tmp_path / "odd.png")
    res = {Path(r.input).name: r for r in api.score_ood(tiny, [*test_in, odd], stats=tmp_path / "s.safetensors")}
    assert res["odd.png"].score > 2 * max(res[f"in{i}.png"].score for i in range(3))
    assert res["odd.png"].above_threshold and not any(res[f"in{i}.png"].above_threshold for i in range(3))
    r = res["odd.png"]
    assert r.score == max(p.score for p in r.patches) and len(r.patches) == 12
    # the saved file reproduces the scores exactly (float64 through safetensors)
    again = ood.load_stats(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(again.covariance, stats.covariance)
    assert again.spec == stats.spec and again.threshold == stats.threshold and again.model["name"] == "llflow.lol-small"


def test_validate_reuses_sample_statistics(tiny, rng) -> None:
    rgb = _dark(rng, 32, 40)
    train = [ood.patch_features(tiny, _dark(rng, 32, 40), ood.FeatureSpec((0, 2), 16))[0] for _ in range(4)]
    stats = ood.fit_stats(train, model={"name": "llflow.lol-small"}, spec=ood.FeatureSpec((0, 2), 16))
    res = ood.validate_image(tiny, ood.score_array(tiny, stats, rgb), rgb, n=3, tau=1.0, seed=7)
    drawn = sample_array(tiny, rgb, n=3, taus=(1.0,), seed=7)
    want = np.mean([s.stats.nonfinite_fraction + s.stats.out_of_range_fraction for s in drawn.samples])
    assert res.samples == 3 and res.seed == 7 and res.error_probability == pytest.approx(want)
    # per patch: the same count restricted to the patch's values
    masks = np.mean([ood.error_mask(s.image).mean(axis=2) for s in drawn.samples], axis=0)
    for p in res.patches:
        y0, x0, y1, x1 = p.box
        assert p.error_probability == pytest.approx(masks[y0:y1, x0:x1].mean())
    summary = ood.summarise([res])
    assert summary["samples"] == 3 and summary["percent_inf"] == 100.0 * res.nonfinite_samples / 3


def test_error_mask_counts_nonfinite_and_out_of_range() -> None:
    img = np.array([[[0.0, 1.5, 1.6], [-0.6, np.nan, np.inf]]], dtype=np.float32)
    assert ood.error_mask(img).tolist() == [[[False, False, True], [True, True, True]]]


def test_stats_for_other_models_or_weights_are_refused(tiny, rng) -> None:
    spec = ood.FeatureSpec((0, 2), 16)
    feats = [ood.patch_features(tiny, _dark(rng, 32, 32), spec)[0] for _ in range(3)]
    stats = ood.fit_stats(feats, model={"name": "llflow.lol-small", "weights_sha256": "a" * 64}, spec=spec)
    stats.check_model(tiny)  # no weights file to compare with: the name and sizes decide
    with pytest.raises(ood.StatsMismatchError, match="fitted for model llflow.lol"):
        dataclasses.replace(stats, model={"name": "llflow.lol"}).check_model(tiny)
    with pytest.raises(ood.StatsMismatchError, match="do not fit"):
        dataclasses.replace(stats, mean=np.zeros(3), covariance=np.eye(3)).check_model(tiny)


# -- registry: statistics shipped with a model ----------------------------------------------


def _manifest_with_stats(ood_stats: dict) -> dict:
    raw = json.loads(Path(__file__).resolve().parents[1].joinpath("weights_manifest.json").read_text())
    raw["models"]["llflow.lol-small"]["ood_stats"] = ood_stats
    return raw


def test_manifest_ood_stats_field_is_validated_and_resolved(tiny, rng, tmp_path, monkeypatch) -> None:
    with pytest.raises(ManifestError, match="ood_stats"):
        Registry(_manifest_with_stats({"path": "weights/x.safetensors"}))
    spec = ood.FeatureSpec((0, 2), 16)
    feats = [ood.patch_features(tiny, _dark(rng, 32, 32), spec)[0] for _ in range(3)]
    stats = ood.fit_stats(feats, model={"name": "llflow.lol-small"}, spec=spec)
    pkg = tmp_path / "pkg"
    (pkg / "weights").mkdir(parents=True)
    stats.save(pkg / "weights" / "small.ood.safetensors")
    sha = sha256_file(pkg / "weights" / "small.ood.safetensors")
    reg = Registry(_manifest_with_stats({"path": "weights/small.ood.safetensors", "sha256": sha}))
    entry = reg.resolve("llflow.lol-small")
    assert entry.ood_stats == "weights/small.ood.safetensors" and entry.ood_stats_sha256 == sha
    monkeypatch.setattr(ood.resources, "files", lambda package: pkg)  # the package's data folder
    model = dataclasses.replace(tiny, entry=entry)
    got, source = ood.stats_for(model, None)
    assert source == "shipped with llflow.lol-small" and got.threshold == stats.threshold
    warn = ood.ood_warner(model)
    assert warn is not None
    odd = _save(_noise(rng, 32, 32), tmp_path / "odd.png")
    assert "OOD score" in warn(str(odd)) and warn(str(_save(_dark(rng, 32, 32), tmp_path / "in.png"))) is None
    bad = dataclasses.replace(entry, ood_stats_sha256="0" * 64)
    with pytest.raises(ChecksumError):
        ood.shipped_stats_path(bad)
    with pytest.raises(UsageError, match="ships no OOD statistics"):
        ood.stats_for(tiny, None)
    assert ood.ood_warner(tiny) is None  # nothing shipped: no warnings, no error


# -- rq_coupling reuses LLFlow's layers ------------------------------------------------------


def test_rq_coupling_nets_are_llflow_layers_and_initialised_with_the_flow() -> None:
    from lle_cli.flows.rq_coupling import RQSplineCoupling
    from lle_cli.flows.layers import ActNorm, ActNormConv2d, ZeroConv2d

    layer = RQSplineCoupling(6, condition_channels=5, hidden_channels=8)
    assert [type(m) for m in layer.fFeatures if not isinstance(m, torch.nn.ReLU)] == [ActNormConv2d, ActNormConv2d, ZeroConv2d]
    model = LLFlow(LLFlowConfig(nf=8, nb=2, gc=8, K=1, hidden_channels=8, stack_blocks=(1,), coupling="rqs"))
    norms = [m for n, m in model.named_modules() if ".affine.fRQspline." in n and isinstance(m, ActNorm)]
    assert norms and all(float(m.logs.detach().abs().sum()) == 0 for m in norms)
    low = torch.rand(1, 3, 16, 16) * 0.3
    model.initialize_actnorms(low, (low * 3).clamp(0, 1))  # LLFlow's one ActNorm initialisation covers them now
    assert all(float(m.logs.detach().abs().sum()) > 0 for m in norms)


# -- command line ---------------------------------------------------------------------------


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


TINY_ARCH = {"nf": 8, "nb": 3, "gc": 8, "K": 1, "hidden_channels": 8, "stack_blocks": [0, 2]}


@pytest.fixture(scope="module")
def tiny_reg() -> Registry:
    """The packaged registry plus ``llflow.test-tiny`` (TINY's architecture), so the CLI runs a tiny model."""
    raw = json.loads(Path(__file__).resolve().parents[1].joinpath("weights_manifest.json").read_text())
    raw["models"]["llflow.test-tiny"] = {**raw["models"]["llflow.lol-small"], "architecture": TINY_ARCH, "title": "test"}
    return Registry(raw)


@pytest.fixture
def tiny_registry(monkeypatch, tiny_reg) -> Registry:
    monkeypatch.setattr("lle_cli.api.get_registry", lambda: tiny_reg)
    return tiny_reg


@dataclasses.dataclass
class CliData:
    a: Path  # weights the statistics belong to
    b: Path  # other weights of the same architecture
    train: Path
    test: Path
    stats: Path  # fitted with the library API for weights a


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory, tiny_reg) -> CliData:
    d = tmp_path_factory.mktemp("ood_cli")
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    module = _fresh(TINY, seed=1)
    save_safetensors(module.state_dict(), d / "a.safetensors")
    save_safetensors(_fresh(TINY, seed=2).state_dict(), d / "b.safetensors")
    train, test = d / "train", d / "test"
    train.mkdir()
    test.mkdir()
    for i in range(5):
        _save(_dark(rng, 32, 40), train / f"t{i}.png")
    for i in range(2):
        _save(_dark(rng, 32, 40), test / f"in{i}.png")
    _save(_noise(rng, 32, 40), test / "odd.png")
    model = LoadedModel(tiny_reg.resolve("llflow.test-tiny"), module, torch.device("cpu"), torch.float32, str(d / "a.safetensors"))
    api.fit_ood(model, sorted(train.iterdir()), output=d / "stats.safetensors", patch_size=16)
    return CliData(d / "a.safetensors", d / "b.safetensors", train, test, d / "stats.safetensors")


def test_help_explains_both_forms(capsys) -> None:
    code, out, _ = run(capsys, "score-ood", "--help")
    assert code == 0 and "score-ood fit TRAIN_DIR" in out and "score-ood TEST_DIR --stats" in out
    assert main(["score-ood", "fit", "--help"]) == 0 and main(["score-ood", "score", "--help"]) == 0


@pytest.mark.slow
def test_cli_fit_then_score_end_to_end(capsys, tiny_registry, cli_data, tmp_path) -> None:
    c = cli_data
    stats = tmp_path / "stats.safetensors"
    m = ["-m", "llflow.test-tiny", "-w", c.a]
    code, out, err = run(capsys, "score-ood", "fit", c.train, *m, "-o", stats, "--patch-size", "16")
    assert code == 0 and out.strip() == str(stats) and "5 images, 30 patches" in err
    assert run(capsys, "score-ood", "fit", c.train, *m, "-o", stats)[0] == 1  # never overwrites without --overwrite
    meta, lib = ood.load_stats(stats), ood.load_stats(c.stats)
    assert meta.model["weights_sha256"] == sha256_file(c.a) and meta.spec.patch_size == 16 and meta.spec.blocks == (0, 2)
    np.testing.assert_array_equal(meta.covariance, lib.covariance)  # the CLI is the library

    # default subcommand, the model taken from the statistics; JSON lines ranked, then a summary
    code, out, _ = run(capsys, "score-ood", c.test, "--stats", stats, "-w", c.a, "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert code == 0 and [r["rank"] for r in rows] == [1, 2, 3] and Path(rows[0]["input"]).name == "odd.png"
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(2)) and len(rows[0]["patches"]) == 6
    assert summary["images"] == 3 and summary["model"] == "llflow.test-tiny" and summary["threshold"] == meta.threshold

    # CSV per patch, --top, and heat maps with the image's size
    code, out, err = run(capsys, "score-ood", "score", c.test, "--stats", stats, "-w", c.a, "--csv", "--patches", "--top", "3",
                         "--heatmap", tmp_path / "maps")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == 3 and Path(table[0]["input"]).name == "odd.png" and float(table[0]["score"]) >= float(table[2]["score"])
    assert Image.open(tmp_path / "maps" / "odd_ood.png").size == (40, 32) and len(list((tmp_path / "maps").iterdir())) == 3

    # statistics of other weights are refused in one line, before any scoring
    code, out, err = run(capsys, "score-ood", c.test, "--stats", stats, "-w", c.b)
    assert code == 2 and "weights sha256" in err and "score-ood fit" in err and out == "" and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_validate_reports_inf_error_probability_and_correlation(capsys, tiny_registry, cli_data) -> None:
    c = cli_data
    code, out, _ = run(capsys, "score-ood", c.test, "--stats", c.stats, "-w", c.a, "--validate", "--n", "2", "--tau", "1", "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    summary = lines[-1]["summary"]
    assert code == 0 and all(r["samples"] == 2 and 0 <= r["error_probability"] <= 1 for r in lines[:-1])
    assert summary["samples"] == 6 and summary["percent_inf"] == 100 * summary["nonfinite_samples"] / 6
    assert summary["mean_error_probability"] == pytest.approx(np.mean([r["error_probability"] for r in lines[:-1]]))
    r, rho = ood.correlations([x["score"] for x in lines[:-1]], [x["error_probability"] for x in lines[:-1]])
    assert summary["pearson"] == pytest.approx(r) and summary["spearman"] == pytest.approx(rho)
    code, out, _ = run(capsys, "score-ood", c.test / "odd.png", "--stats", c.stats, "-w", c.a, "--validate", "--n", "1", "--top", "1")
    assert code == 0 and "odd.png" in out and "%Inf" in out and "mean error probability" in out


@pytest.mark.slow
def test_enhance_and_sample_warn_above_the_threshold_without_changing_outputs(capsys, tiny_registry, cli_data, tmp_path) -> None:
    c = cli_data
    m = ["-m", "llflow.test-tiny", "-w", c.a]
    code, _, err = run(capsys, "enhance", c.test / "odd.png", *m, "-o", tmp_path / "warned.png", "--ood-stats", c.stats)
    assert code == 0 and "odd.png: unlike llflow.test-tiny's training inputs" in err
    code, _, err = run(capsys, "enhance", c.test / "odd.png", *m, "-o", tmp_path / "plain.png")
    assert code == 0 and "unlike" not in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "warned.png")), np.asarray(Image.open(tmp_path / "plain.png")))
    code, _, err = run(capsys, "enhance", c.test / "in0.png", *m, "-o", tmp_path / "in0.png", "--ood-stats", c.stats)
    assert code == 0 and "unlike" not in err
    code, _, err = run(capsys, "sample", c.test / "odd.png", *m, "-o", tmp_path / "s", "--n", "1", "--seed", "0",
                       "--max-out-of-range", "1", "--no-sheet", "--ood-stats", c.stats)
    assert "odd.png: unlike" in err and (tmp_path / "s" / "odd_sample00_tau1_off0.png").is_file()
    code, _, err = run(capsys, "enhance", c.test / "odd.png", "-o", tmp_path / "z.png", "--ood-stats", c.stats)
    assert code == 2 and "not an LLFlow-family model" in err


def test_calibrate_sets_the_threshold_from_validated_photos(capsys, tiny_registry, cli_data, tmp_path) -> None:
    from lle_cli.ood_calibration import calibrate_threshold

    c = cli_data
    out = tmp_path / "calibrated.safetensors"
    code, stdout, err = run(capsys, "score-ood", "calibrate", c.test, "-o", out, "--stats", c.stats, "-m", "llflow.test-tiny",
                            "-w", c.a, "--n", "2", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    cal = ood.load_stats(out)
    assert cal.threshold == pytest.approx(report["threshold"]) and cal.threshold_method.startswith("calibrated on 3 validated")
    old = ood.load_stats(c.stats)
    assert report["previous_threshold"] == pytest.approx(old.threshold)
    assert np.array_equal(cal.mean, old.mean) and np.array_equal(cal.covariance, old.covariance)
    # the same threshold from the library, on what --validate reports for these photos
    code, scored, _ = run(capsys, "score-ood", c.test, "--stats", c.stats, "-w", c.a, "-m", "llflow.test-tiny",
                          "--validate", "--n", "2", "--json")
    rows = [json.loads(x) for x in scored.splitlines() if '"input"' in x]
    want = calibrate_threshold([r["score"] for r in rows], [r["error_probability"] for r in rows],
                               [r["nonfinite_samples"] for r in rows])
    assert cal.threshold == pytest.approx(want.threshold)
    assert report["flagged"] == sum(r["score"] > cal.threshold for r in rows)
    # scoring with the calibrated file says where its threshold comes from
    code, _, err = run(capsys, "score-ood", c.test, "--stats", out, "-w", c.a, "-m", "llflow.test-tiny", "--csv")
    assert code == 0 and "calibrated on photos whose samples were checked" in err
