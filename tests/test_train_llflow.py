"""`lle train llflow`: the NLL objective against the golden fixtures, the data pipeline, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lle_cli.cli.main import main
from lle_cli.errors import InputError, UsageError
from lle_cli.models import load_state_strict
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.models.llflow.preprocess import equalize_hist, log_image
from lle_cli.train.common import load_checkpoint, step_generator
from lle_cli.train.llflow import (
    FlowNLL,
    LLFlowTrainConfig,
    architecture,
    find_pairs,
    load_pairs,
    lr_at,
    make_batch,
    network_input_u8,
    train_llflow,
    train_step,
    validate,
)
from lle_cli.weights import load_safetensors, load_upstream_checkpoint

from .conftest import shared_path

# a flow small enough for many steps per second on one core
MICRO = {"nf": 8, "nb": 1, "gc": 8, "K": 1, "hidden_channels": 8, "stack_blocks": [0]}


def _write_pairs(root: Path, rng, n: int = 4, size: tuple[int, int] = (40, 48)) -> Path:
    for sub in ("low", "high"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        high = rng.random((*size, 3)) * 0.6 + 0.2
        high = np.clip(high + np.linspace(0, 0.2, size[1])[None, :, None], 0, 1)
        low = np.clip(high**2.2 * 0.1 + rng.normal(0, 0.005, high.shape), 0, 1)
        Image.fromarray((high * 255).astype(np.uint8)).save(root / "high" / f"p{i}.png")
        Image.fromarray((low * 255).astype(np.uint8)).save(root / "low" / f"p{i}.png")
    return root


@pytest.fixture
def pairs(tmp_path, rng) -> Path:
    return _write_pairs(tmp_path / "data", rng)


@pytest.fixture
def micro(tmp_path) -> str:
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(MICRO))
    return str(path)


def _cfg(model: str, **kw) -> LLFlowTrainConfig:
    base = dict(model=model, iterations=4, batch_size=2, patch=16, log_every=1, checkpoint_every=2)
    base.update(kw)
    return LLFlowTrainConfig(**base)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- the objective ----------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("gt_branch", [False, True], ids=["colour-map-mean", "gt-mean"])
@pytest.mark.slow
def test_one_training_step_from_golden_mid_weights_has_the_golden_nll(gt_branch) -> None:
    model = LLFlow(LLFlowConfig(nb=8, K=2))
    load_state_strict(model, load_upstream_checkpoint(shared_path("golden", "llflow", "llflow_mid_random.safetensors")), source="mid")
    common = shared_path("golden", "llflow", "common")
    lq = torch.from_numpy(np.load(common / "lowlight_a_net_input.npy"))
    gt = torch.from_numpy(np.load(common / "lowlight_a_gt_bright.npy"))
    want = np.load(shared_path("golden", "llflow", "mid", f"lowlight_a_encode_nll{'_gtbranch' if gt_branch else ''}.npy"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.99))
    nll, taken = train_step(FlowNLL(model.train()), opt, lq, gt, torch.tensor([gt_branch]))
    assert taken
    assert abs(nll - float(want[0])) <= 1e-4 * abs(float(want[0]))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "RRDB.conv_first.weight" in changed and "flowUpsamplerNet.layers.3.affine.fAffine.4.weight" in changed
    if not gt_branch:  # the colour-map head is trained through the mean
        assert "RRDB.fine_tune_color_map.0.weight" in changed


def test_dequantisation_adds_the_log_quant_term() -> None:
    torch.manual_seed(0)
    model = LLFlow(LLFlowConfig(**{**MICRO, "stack_blocks": (0,)})).eval()
    obj = FlowNLL(model, quant=32)
    lq, gt = torch.rand(1, 6, 16, 16), torch.rand(1, 3, 16, 16) * 0.5 + 0.25
    half = torch.full_like(gt, 0.5)  # noise 0.5 leaves gt unchanged: only the log(quant) term remains
    with torch.no_grad():
        diff = obj(lq, gt, torch.tensor([False]), half) - obj(lq, gt, torch.tensor([False]))
    assert diff.item() == pytest.approx(np.log(32) / np.log(2), rel=1e-5)  # log2(quant) bits per pixel


def test_a_non_finite_loss_skips_the_step() -> None:
    model = LLFlow(LLFlowConfig(**{**MICRO, "stack_blocks": (0,)}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lq = torch.full((1, 6, 16, 16), float("nan"))
    value, taken = train_step(FlowNLL(model), opt, lq, torch.rand(1, 3, 16, 16), torch.tensor([False]))
    assert not taken and not np.isfinite(value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_learning_rate_halves_at_the_paper_milestones() -> None:
    cfg = LLFlowTrainConfig(iterations=100)
    lrs = [lr_at(cfg, s) for s in (1, 50, 51, 75, 76, 90, 91, 95, 96, 100)]
    assert lrs == pytest.approx([5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4, 6.25e-5, 6.25e-5, 3.125e-5, 3.125e-5])


# ---- data ---------------------------------------------------------------------------------------
def test_pairs_from_folders_csv_and_json(pairs, tmp_path) -> None:
    found = find_pairs(pairs)
    assert [(a.name, b.name) for a, b in found] == [(f"p{i}.png", f"p{i}.png") for i in range(4)]
    (tmp_path / "list.csv").write_text("low,high\ndata/low/p1.png,data/high/p1.png\n")
    assert find_pairs(tmp_path / "list.csv") == [(tmp_path / "data/low/p1.png", tmp_path / "data/high/p1.png")]
    (tmp_path / "list.json").write_text(json.dumps([{"low": "data/low/p2.png", "high": "data/high/p2.png"}, ["data/low/p0.png", "data/high/p0.png"]]))
    assert [a.name for a, _ in find_pairs(tmp_path / "list.json")] == ["p2.png", "p0.png"]
    (tmp_path / "bad.json").write_text(json.dumps([["data/low/p2.png", "data/high/missing.png"]]))
    with pytest.raises(InputError, match="missing.png"):
        find_pairs(tmp_path / "bad.json")
    (pairs / "low" / "lonely.png").write_bytes((pairs / "low" / "p0.png").read_bytes())
    with pytest.raises(InputError, match="lonely"):
        find_pairs(pairs)
    with pytest.raises(InputError, match="smaller than --patch"):
        load_pairs(find_pairs(tmp_path / "list.csv"), patch=64)


def test_crops_align_and_histeq_is_of_the_full_image(pairs) -> None:
    data = load_pairs(find_pairs(pairs), patch=16)
    idx = torch.tensor([0, 1, 2, 3])
    lq, gt = make_batch(data, idx, step_generator(0, 1), 16, flip=True)
    assert lq.shape == (4, 6, 16, 16) and gt.shape == (4, 3, 16, 16)
    for i in range(4):
        p = data[i]
        low = p.low.float() / 255
        # find the crop: the target crop occurs at exactly one position (random images), maybe flipped
        hits = []
        for top in range(p.high.shape[1] - 15):
            for left in range(p.high.shape[2] - 15):
                window = p.high[:, top : top + 16, left : left + 16].float() / 255
                for flipped in (False, True):
                    if torch.equal(window.flip(-1) if flipped else window, gt[i]):
                        hits.append((top, left, flipped))
        assert len(hits) == 1
        top, left, flipped = hits[0]
        f = (lambda t: t.flip(-1)) if flipped else (lambda t: t)
        assert torch.allclose(lq[i, :3], f(log_image(low[:, top : top + 16, left : left + 16])))
        full_eq = equalize_hist(p.low)[:, top : top + 16, left : left + 16].float() / 255
        assert torch.equal(lq[i, 3:], f(full_eq))  # equalised before cropping, as upstream
        crop_eq = equalize_hist(p.low[:, top : top + 16, left : left + 16].contiguous()).float() / 255
        assert not torch.equal(lq[i, 3:], f(crop_eq))


def test_architecture_presets_files_and_errors(tmp_path, micro) -> None:
    assert architecture("small", "rqs") == {"nf": 32, "nb": 4, "K": 4, "stack_blocks": [1], "coupling": "rqs"}
    assert architecture(micro, "affine")["nf"] == 8
    (tmp_path / "m.yaml").write_text("nf: 16\nnb: 1\nK: 1\nstack_blocks: [0]\n")
    assert architecture(str(tmp_path / "m.yaml"), "affine") == {"nf": 16, "nb": 1, "K": 1, "stack_blocks": [0], "coupling": "affine"}
    (tmp_path / "bad.json").write_text(json.dumps({"nf": 8, "levels": 4}))
    with pytest.raises(UsageError, match="levels"):
        architecture(str(tmp_path / "bad.json"), "affine")
    with pytest.raises(UsageError, match="coupling"):
        architecture("small", "glow")
    with pytest.raises(UsageError, match="preset"):
        architecture("huge", "affine")


# ---- training ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_cpu_run_decreases_nll(tmp_path, rng, micro) -> None:
    data = _write_pairs(tmp_path / "same", rng, n=4, size=(32, 32))  # crop = whole image: the same batch every step
    cfg = _cfg(micro, iterations=40, batch_size=4, patch=32, flip=False, checkpoint_every=40, lr=2e-3, lr_milestones=())
    result = train_llflow(data, tmp_path / "out.safetensors", cfg, run_dir=tmp_path / "run")
    nll = [r["nll"] for r in _metrics(tmp_path / "run")]
    assert len(nll) == 40 and all(np.isfinite(nll))
    assert np.mean(nll[-5:]) < np.mean(nll[:5]) - 0.5
    assert result.info["skipped"] == 0
    with safe_open(str(result.output), "pt") as f:
        meta = json.loads(f.metadata()["lle"])
    assert meta["family"] == "llflow" and meta["training"]["architecture"]["nf"] == 8


@pytest.mark.parametrize("coupling", ["affine", "rqs"])
@pytest.mark.slow
def test_resume_continues_exactly(pairs, tmp_path, micro, coupling) -> None:
    cfg = lambda n: _cfg(micro, coupling=coupling, iterations=n, lr_milestones=())  # noqa: E731
    straight = train_llflow(pairs, tmp_path / "a.safetensors", cfg(4), run_dir=tmp_path / "ra")
    train_llflow(pairs, tmp_path / "b.safetensors", cfg(2), run_dir=tmp_path / "rb")
    ck = load_checkpoint(tmp_path / "rb" / "checkpoints" / "step-00000002.safetensors")
    side = json.loads((tmp_path / "rb" / "checkpoints" / "step-00000002.json").read_text())
    assert ck.step == 2 and "llflow" in ck.optimizers and side["step"] == 2
    # the optimiser state is a separate file: the weights file alone carries none, and resuming needs it
    opt_file = tmp_path / "rb" / "checkpoints" / "step-00000002.optim.safetensors"
    assert side["optimizer_file"] == opt_file.name and not any(k.startswith("optim/") for k in load_safetensors(ck.path))
    assert load_checkpoint(ck.path, optimizers=False).optimizers == {}
    opt_file.rename(opt_file.with_suffix(".bak"))
    with pytest.raises(InputError, match="optim.safetensors is missing"):
        load_checkpoint(ck.path)
    opt_file.with_suffix(".bak").rename(opt_file)
    assert side["meta"]["config"]["architecture"]["coupling"] == coupling and np.isfinite(side["meta"]["metrics"]["nll"])
    resumed = train_llflow(pairs, tmp_path / "c.safetensors", cfg(4), run_dir=tmp_path / "rb", resume=tmp_path / "rb")
    assert resumed.resumed_from == 2
    a, c = load_safetensors(straight.output), load_safetensors(resumed.output)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert [r["step"] for r in _metrics(tmp_path / "rb")] == [1, 2, 3, 4]
    with pytest.raises(UsageError, match="different settings"):
        train_llflow(pairs, tmp_path / "d.safetensors", _cfg(micro, coupling=coupling, iterations=6, lr=1.0),
                     run_dir=tmp_path / "rb", resume=tmp_path / "rb")
    with pytest.raises(UsageError, match="earlier run"):
        train_llflow(pairs, tmp_path / "e.safetensors", cfg(4), run_dir=tmp_path / "rb")


def test_validation_reports_nll_psnr_ssim_blocks_and_non_finite_fraction(pairs, micro) -> None:
    torch.manual_seed(0)
    model = LLFlow(LLFlowConfig(**{**MICRO, "stack_blocks": (0,)}))
    data = load_pairs(find_pairs(pairs))
    lq, gt = make_batch(data, torch.arange(4), step_generator(0, 1), 16, flip=False)
    model.initialize_actnorms(None, gt, lq=lq)
    v = validate(model, data[:2], samples=3)
    assert set(v) == {"val_nll", "val_psnr", "val_ssim", "val_psnr_tau1", "val_block", "val_nonfinite"}
    assert 0 < v["val_psnr"] < 60 and -1 <= v["val_ssim"] <= 1 and 0 <= v["val_nonfinite"] <= 1
    assert 0 < v["val_psnr_tau1"] < 60 and v["val_block"] > 0
    # the held-out NLL is the training objective's value on the same pair (colour-map mean, no noise)
    p = data[0]
    h8, w8 = (p.low.shape[1] // 8) * 8, (p.low.shape[2] // 8) * 8
    with torch.no_grad():
        model.eval()
        one = FlowNLL(model)(network_input_u8(p.low[None, :, :h8, :w8], p.histeq[None, :, :h8, :w8]),
                             p.high[None, :, :h8, :w8].float() / 255, torch.zeros(1, dtype=torch.bool))
        model.train()
    v1 = validate(model, data[:1], samples=0)
    assert v1["val_nll"] == pytest.approx(float(one[0]), rel=1e-5)
    assert model.training  # put back in training mode


def test_the_best_validated_weights_are_kept(pairs, tmp_path, micro) -> None:
    import json

    run = tmp_path / "run"
    train_llflow(pairs, tmp_path / "w.safetensors", _cfg(micro, iterations=4, val_every=2), val_data=pairs, run_dir=run)
    best = json.loads((run / "best.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    nlls = {r["step"]: r["val_nll"] for r in rows if "val_nll" in r}
    assert set(nlls) == {2, 4} and best["iteration"] == min(nlls, key=nlls.get)
    assert best["val_nll"] == pytest.approx(min(nlls.values()))
    assert (run / "best.safetensors").is_file()


def test_bf16_needs_cuda(pairs, tmp_path, micro) -> None:
    with pytest.raises(UsageError, match="bf16"):
        train_llflow(pairs, tmp_path / "o.safetensors", _cfg(micro, precision="bf16"), device="cpu")


@pytest.mark.slow
def test_command_trains_and_the_weights_load_in_enhance_and_import(pairs, tmp_path, capsys) -> None:
    out = tmp_path / "mine.safetensors"
    args = ["train", "llflow", "--data", pairs, "-o", out, "--config", "small", "--iterations", 2, "--batch-size", 2,
            "--patch", 16, "--val-data", pairs, "--device", "cpu", "--quiet"]
    assert main([str(a) for a in args]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    rows = _metrics(tmp_path / "mine_run")
    assert rows[-1].keys() >= {"val_psnr", "val_ssim", "val_nonfinite"}
    assert main([str(a) for a in args]) == 1  # the output exists: refused without --overwrite
    capsys.readouterr()
    photo = tmp_path / "dark.png"
    Image.fromarray((np.random.default_rng(1).random((20, 28, 3)) * 50).astype(np.uint8)).save(photo)
    code = main(["enhance", str(photo), "--model", "llflow.lol-small", "--weights", str(out), "-o", str(tmp_path / "e.png"), "--device", "cpu", "-q"])
    assert code == 0 and Image.open(tmp_path / "e.png").size == (28, 20)
    assert main(["models", "import", str(out), "--model", "llflow.lol-small", "--trust-unknown"]) == 0


@pytest.mark.slow
def test_two_process_ddp_with_gloo_stays_in_sync(pairs, tmp_path, micro) -> None:
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lle_cli", "train", "llflow", "--data", pairs, "-o", out, "--config", micro, "--coupling", "rqs",
           "--iterations", 3, "--batch-size", 4, "--patch", 16, "--log-every", 1, "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out)  # only rank 0 reports
    rows = _metrics(tmp_path / "ddp_run")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["nll"]) for r in rows)
    assert all(r["rank_spread"] == 0.0 for r in rows)  # identical weights on both ranks after every step
    assert sorted(p.name for p in (tmp_path / "ddp_run" / "checkpoints").iterdir()) == [
        "step-00000003.json", "step-00000003.optim.safetensors", "step-00000003.safetensors"]
