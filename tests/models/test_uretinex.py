"""URetinex-Net: parity with the authors' test.py on every fixture of ../shared/golden/zoo/uretinex,
the four-file import (each file by its sha256; the model usable once all are in), the weights-only
load that allows argparse.Namespace and nothing else, the unfolding constants checked against the
file's pickled options, `lle enhance`, and random-weight gradients.
"""

from __future__ import annotations

import argparse
import json
import pickle
import types

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api
from lle_cli.errors import ChecksumError, OfflineError, WeightsError
from lle_cli.models import FAMILIES, build_model, detect_family, load_state_strict
from lle_cli.models.uretinex import URetinexConfig, update_p, update_q
from lle_cli.registry import get_registry
from lle_cli.weights import (
    load_safetensors,
    load_upstream_checkpoint,
    load_upstream_component,
    sha256_file,
)

from ..conftest import shared_path
from ..test_download import hub  # noqa: F401  (the fake hub and authors' hosts, a fixture)
from .test_zoo import PNG_DIFFERING_AT_MOST, _manifest, _quantise, run

NAME = "uretinex.lol"
FILES = ("init_low", "unfolding", "L_adjust", "init_high")  # the manifest's components, as named upstream
INPUTS = ("lowlight_a", "lowlight_odd", "backlit_a")
# fixture suffix -> URetinexOutputs field (see NOTES.md: unfolded_* are round 2's R and L)
FIELDS = {
    "out": "enhanced",
    "adjusted_L": "adjusted_illumination",
    "unfolded_L": "illumination",
    "unfolded_R": "reflectance",
    "init_L": "init_illumination",
    "init_R": "init_reflectance",
}


def _file(component: str):
    return shared_path("upstream", "weights", "uretinex", f"{component}.pth")


def _state_from_the_authors_files() -> dict[str, torch.Tensor]:
    state = {}
    for c in FILES:
        tensors, _ = load_upstream_component(_file(c))
        state.update({f"{c}.{k}": v for k, v in tensors.items()})
    return state


@pytest.fixture(scope="module")
def pretrained() -> torch.nn.Module:
    model = build_model("uretinex", get_registry().resolve(NAME).architecture)
    load_state_strict(model, _state_from_the_authors_files(), source="uretinex")
    return model.eval()


def _official_input(img: str) -> torch.Tensor:
    """test.py: ``Image.open`` (no convert; these PNGs are RGB) then ``ToTensor``."""
    rgb = np.asarray(Image.open(shared_path("golden", "inputs", f"{img}.png")))
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)


# -- parity with the authors' code ------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("img", INPUTS)
def test_every_fixture_array_matches_the_official_code(pretrained, img: str) -> None:
    atol = _manifest()["suggested_tolerances"]["float32_vs_these_float32_fixtures"]["uretinex"]["atol"]
    assert atol <= 1e-5
    with torch.no_grad():
        ours = pretrained.forward_all(_official_input(img))
        fast = pretrained(_official_input(img))
    files = sorted(shared_path("golden", "zoo", "uretinex").glob(f"{img}_*.npy"))
    assert any(f.stem == f"{img}_out" for f in files)
    for f in files:
        what = f.stem[len(img) + 1 :]
        assert what in FIELDS, f"fixture {f.name} is not checked"
        actual, golden = getattr(ours, FIELDS[what]).numpy(), np.load(f)
        assert actual.shape == golden.shape, f.name
        err = float(np.abs(actual - golden).max())
        assert err <= atol, f"uretinex/{f.name}: max abs diff {err:.2e} > {atol:.0e}"
    torch.testing.assert_close(fast, ours.enhanced, atol=0, rtol=0)  # forward is forward_all's output
    assert float(ours.ratio) == 5.0


@pytest.mark.parity
@pytest.mark.parametrize("img", INPUTS)
def test_quantised_output_matches_the_official_png(pretrained, img: str) -> None:
    with torch.no_grad():
        out = pretrained(_official_input(img)).numpy()
    png = np.asarray(Image.open(shared_path("golden", "zoo", "uretinex", f"{img}_out.png")).convert("RGB")).astype(int)
    diff = np.abs(_quantise(out, "truncate").astype(int) - png)  # np_save_TensorImg truncates
    assert diff.max() <= 1 and (diff > 0).mean() <= PNG_DIFFERING_AT_MOST


def test_unfolding_updates_are_the_closed_form_minimisers(rng) -> None:
    """P and Q solve their least-squares problems: the gradient of each objective vanishes there."""
    i, q, r, l = (torch.tensor(rng.random(s), dtype=torch.float64) for s in ((1, 3, 5, 7), (1, 1, 5, 7), (1, 3, 5, 7), (1, 1, 5, 7)))
    p = update_p(i, q, r, 0.15).requires_grad_()
    ((i - p * q) ** 2 + 0.15 * (p - r) ** 2).sum().backward()
    assert p.grad.abs().max() < 1e-12
    q2 = update_q(i, p.detach(), l, 0.55).requires_grad_()
    ((i - p.detach() * q2) ** 2).sum().add(0.55 * ((q2 - l) ** 2).sum()).backward()
    assert q2.grad.abs().max() < 1e-12


# -- the manifest, the checkpoints' options ---------------------------------------------------------


@pytest.mark.parity
def test_manifest_lists_the_four_files_pinned_with_their_sha256() -> None:
    entry = get_registry().resolve("uretinex")
    assert entry.name == NAME and entry.upstream is None and entry.downloadable
    commit = _manifest()["upstream"]["URetinex-Net"]["commit"]
    assert [c.component for c in entry.components] == list(FILES)
    for c in entry.components:
        assert c.filename == f"{c.component}.pth"
        assert c.url == f"https://github.com/AndersonYong/URetinex-Net/raw/{commit}/ckpt/{c.filename}"
        assert c.sha256 == sha256_file(_file(c.component)) and c.size == _file(c.component).stat().st_size
    model = build_model(entry.family, entry.architecture)
    assert sum(p.numel() for p in model.parameters()) == entry.parameters
    assert entry.architecture["ratio"] == 5.0  # test.py's default, not evaluate.py's reference-derived ratio


@pytest.mark.parity
def test_architecture_is_the_unfolding_options_pickled_in_the_checkpoint() -> None:
    _, options = load_upstream_component(_file("unfolding"))
    cfg = FAMILIES["uretinex"].make_config(get_registry().resolve(NAME).architecture)
    assert (options["round"], options["gamma"], options["lamda"], options["Roffset"], options["Loffset"]) == (
        cfg.rounds, cfg.gamma, cfg.lamda, cfg.r_offset, cfg.l_offset
    )
    assert options["concat_L"] is True and options["R_model"] == "HalfDnCNNSE" and options["L_model"] == "Illumination_Alone"
    assert load_upstream_component(_file("L_adjust"))[1]["A_model"] == "naive"
    assert load_upstream_component(_file("init_low"))[1] == {}  # no options pickled there


def test_the_loader_allows_argparse_namespace_and_no_other_class(tmp_path) -> None:
    weights = {"model_A": {"conv1.weight": torch.zeros(2, 2)}}
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"state_dict": weights, "opts": argparse.Namespace(round=3, gamma=0.1)}, good)
    torch.save({"state_dict": weights, "opts": types.SimpleNamespace(round=3)}, bad)
    state, options = load_upstream_component(good)
    assert list(state) == ["model_A.conv1.weight"] and options == {"round": 3, "gamma": 0.1}
    for loader in (load_upstream_component, load_upstream_checkpoint):
        with pytest.raises(WeightsError, match="weights-only load refuses"):
            loader(bad)
    # the allowance is scoped to lle's loader, not left in torch's global list
    with pytest.raises(pickle.UnpicklingError):
        torch.load(good, weights_only=True)


def test_a_pickled_class_with_code_is_never_run(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "opts": Boom()}, path)
    with pytest.raises(WeightsError, match="weights-only load refuses"):
        load_upstream_component(path)


# -- import by sha256, enhance ----------------------------------------------------------------------


@pytest.mark.parity
def test_import_each_file_by_sha256_then_enhance(capsys, tmp_path, lle_home) -> None:
    entry = get_registry().resolve(NAME)
    for i, c in enumerate(FILES):  # one file at a time, recognised by its sha256 alone
        with pytest.raises(OfflineError, match="still needed|get the authors' files"):
            api.load_model(NAME, offline=True)
        r = api.import_checkpoint(_file(c))
        assert (r.model, r.component, r.verified) == (NAME, c, True)
        assert r.missing == FILES[i + 1 :]
    record = json.loads((lle_home / "models" / f"{NAME}.json").read_text())
    assert record["verified"] is True and record["sha256"] == sha256_file(r.path)
    assert record["source_sha256"] == {c.component: c.sha256 for c in entry.components}
    assert not (lle_home / "models" / f"{NAME}.parts").exists()  # staging is cleared once assembled
    stored = load_safetensors(lle_home / "models" / f"{NAME}.safetensors")
    assert detect_family(stored) == "uretinex" and sum(v.numel() for v in stored.values()) == entry.parameters
    assert not any(k.startswith(("L_adjust.model_R.", "L_adjust.model_decom.")) for k in stored)  # unused copies dropped

    for img in ("lowlight_odd", "backlit_a"):  # odd size; a bright image whose output exceeds 1 before the clamp
        out = tmp_path / f"{img}.png"
        code, _, err = run(capsys, "enhance", shared_path("golden", "inputs", f"{img}.png"), "-m", "uretinex", "-o", out, "-q", "--precision", "fp32")
        assert code == 0, err
        png = np.asarray(Image.open(shared_path("golden", "zoo", "uretinex", f"{img}_out.png")).convert("RGB")).astype(int)
        assert np.abs(np.asarray(Image.open(out)).astype(int) - png).max() <= 1, img  # ours rounds, theirs truncates


@pytest.mark.parity
def test_importing_the_folder_gives_the_same_bytes(capsys, lle_home) -> None:
    """`lle models import DIR`: all four files, in any order, make one deterministic safetensors file."""
    assert api.import_checkpoint(_file("L_adjust")).missing == ("init_low", "unfolding", "init_high")
    code, out, err = run(capsys, "models", "import", _file("init_low").parent)
    assert code == 0, err
    path = lle_home / "models" / f"{NAME}.safetensors"
    assert out.strip() == str(path)
    first = sha256_file(path)
    # importing one file again keeps the others (re-staged from the assembled file) and the same bytes
    r = api.import_checkpoint(_file("unfolding"))
    assert r.missing == () and r.path == path and sha256_file(path) == first
    assert not (lle_home / "models" / f"{NAME}.parts").exists()


@pytest.mark.parity
def test_importing_the_files_one_command_line_says_what_is_still_needed(capsys, lle_home) -> None:
    """`lle models import a.pth b.pth` (a shell glob): each file is reported; the model's safetensors is
    printed on stdout only once all of its files are in."""
    code, out, err = run(capsys, "models", "import", _file("init_low"), _file("unfolding"))
    assert code == 0 and out == "", err
    assert err.count("still needed:") == 2 and err.rstrip().endswith("still needed: L_adjust, init_high"), err
    code, out, err = run(capsys, "models", "import", _file("L_adjust"), _file("init_high"))
    assert code == 0, err
    assert out.strip() == str(lle_home / "models" / f"{NAME}.safetensors") and "the last of its files" in err


def test_models_info_lists_every_file_of_the_model(capsys) -> None:
    code, out, _ = run(capsys, "models", "info", "uretinex", "--json")
    info = json.loads(out)
    entry = get_registry().resolve(NAME)
    assert code == 0 and info["upstream"] is None
    assert [(c["name"], c["sha256"]) for c in info["components"]] == [(c.component, c.sha256) for c in entry.components]
    assert len(info["components"]) == 4 and all(c["sources"] and c["url"].startswith("https://") for c in info["components"])


@pytest.mark.parity
def test_a_file_with_other_unfolding_constants_is_refused(tmp_path, lle_home) -> None:
    from lle_cli.weights import UPSTREAM_SAFE_GLOBALS

    with torch.serialization.safe_globals(list(UPSTREAM_SAFE_GLOBALS)):
        ckpt = torch.load(_file("unfolding"), map_location="cpu", weights_only=True)
    ckpt = {"state_dict": ckpt["state_dict"], "opts": argparse.Namespace(**{**vars(ckpt["opts"]), "round": 2})}
    other = tmp_path / "unfolding.pth"
    torch.save(ckpt, other)
    with pytest.raises(ChecksumError, match="does not match uretinex.lol"):
        api.import_checkpoint(other, NAME)
    with pytest.raises(WeightsError, match="round=2"):
        api.import_checkpoint(other, NAME, trust_unknown=True)  # identified by its name, refused by its options
    assert not (lle_home / "models" / f"{NAME}.parts" / "unfolding.safetensors").exists()


@pytest.mark.parity
def test_download_fetches_the_four_files_each_checked(hub, lle_home) -> None:  # noqa: F811
    """Without the files, the first use downloads each one (verified by its sha256) and assembles the model."""
    from lle_cli.loading import fetch_weights

    entry = get_registry().resolve(NAME)
    for c in entry.components:
        data = _file(c.component).read_bytes()
        if c.component == "init_high":  # a mirror with the wrong bytes for one file: refused
            data = data[:-1] + bytes([data[-1] ^ 1])
        hub.add_upstream(c.url, data)
    with pytest.raises(ChecksumError):
        fetch_weights(entry)
    staged = sorted(p.stem for p in (lle_home / "models" / f"{NAME}.parts").iterdir())
    assert staged == ["L_adjust", "init_low", "unfolding"]  # the good files are kept for the next attempt
    hub.add_upstream(entry.components[3].url, _file("init_high").read_bytes())
    r = fetch_weights(entry)
    assert r.via == "upstream" and (lle_home / "models" / f"{NAME}.safetensors") == r.path
    assert json.loads((lle_home / "models" / f"{NAME}.json").read_text())["verified"] is True
    assert not (lle_home / "models" / f"{NAME}.parts").exists()


# -- random weights ---------------------------------------------------------------------------------


def test_random_weights_forward_backward(rng) -> None:
    torch.manual_seed(0)
    model = build_model("uretinex", {"rounds": 2, "width": 8, "restore_width": 16, "se_reduction": 4})
    x = torch.tensor(rng.random((2, 3, 17, 23)), dtype=torch.float32, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if name.startswith("init_high."):
            assert not p.requires_grad and p.grad is None  # frozen: only evaluate.py's reference ratio uses it
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    ref = torch.tensor(rng.random((2, 3, 17, 23)), dtype=torch.float32)
    x.grad = None
    outs = model.forward_all(x, reference=ref)
    outs.enhanced.mean().backward()  # the reference-derived ratio is differentiable in the input
    assert torch.isfinite(x.grad).all() and outs.ratio.shape == (2,) and torch.isfinite(outs.ratio).all()


def test_ratio_override_and_reference_ratio(rng) -> None:
    torch.manual_seed(1)
    model = build_model("uretinex", {"ratio": 3.0}).eval()
    x = torch.tensor(rng.random((1, 3, 12, 10)), dtype=torch.float32) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(model.forward_all(x).enhanced, model(x), atol=0, rtol=0)
        torch.testing.assert_close(model.forward_all(x, ratio=3.0).enhanced, model(x), atol=0, rtol=0)
        assert not torch.equal(model.forward_all(x, ratio=7.0).enhanced, model(x))
        ref = torch.tensor(rng.random((1, 3, 12, 10)), dtype=torch.float32)
        outs = model.forward_all(x, reference=ref)
        _, high = model.init_high.model_R(ref)
        expected = 1 / ((outs.illumination / (high + 1e-4)).mean() + 1e-4)  # evaluate.py's get_ratio
        torch.testing.assert_close(outs.ratio[0], expected)
    with pytest.raises(ValueError, match="not both"):
        model.forward_all(x, ratio=2.0, reference=ref)
    with pytest.raises(ValueError):
        URetinexConfig(ratio=0)


def test_descriptor_says_it_is_never_tiled() -> None:
    spec = FAMILIES["uretinex"]
    assert spec.tileable is False and not spec.tile_exact  # the SE layer averages over the whole image
    # the image-wide mean: changing one far pixel changes every output pixel
    torch.manual_seed(2)
    model = build_model("uretinex", {"rounds": 1}).eval()
    x = torch.rand(1, 3, 8, 90) * 0.5
    x2 = x.clone()
    x2[..., -1] = 1.0
    with torch.no_grad():
        assert not torch.equal(model(x)[..., :4], model(x2)[..., :4])  # 86+ px away, beyond the local radius


@pytest.mark.parametrize("height", [9, 24, 37, 50])
def test_strips_equal_the_whole_image(monkeypatch, height: int) -> None:
    """At inference a large image runs strip by strip (every net with its receptive radius as halo,
    the squeeze-excite mean summed over strips first): the same output as the whole-image forward.
    A tiny strip makes several strips, halos taller than a strip's own rows, and a short last strip."""
    from lle_cli.models import uretinex

    torch.manual_seed(3)
    model = build_model("uretinex", {"rounds": 3, "width": 8, "restore_width": 16, "se_reduction": 4}).eval()
    x = torch.rand(2, 3, height, 19) * 0.6
    with torch.no_grad():
        whole = model(x)
        monkeypatch.setattr(uretinex, "STRIP_PIXELS", 19 * 5)
        calls = []
        monkeypatch.setattr(uretinex, "_map_rows", lambda *a, _f=uretinex._map_rows: calls.append(a[2]) or _f(*a))
        strips = model(x)
    assert sorted(set(calls)) == [0, 4, 7, 8]  # every net ran in strips, with its own halo
    torch.testing.assert_close(strips, whole, atol=1e-5, rtol=0)
    assert torch.is_grad_enabled()
    y = model(x[..., :9, :].requires_grad_())  # training keeps the whole-image path (autograd through it)
    assert y.requires_grad


@pytest.mark.parity
def test_strip_path_matches_the_pretrained_model_on_a_photo(pretrained, monkeypatch) -> None:
    """With the released weights and a real photo (its squeeze-excite means are what they are in
    use), strips of 8-16 rows give the whole-image output."""
    from lle_cli.models import uretinex

    x = _official_input("lowlight_odd")[..., :61, :75]
    with torch.no_grad():
        whole = pretrained(x)
        monkeypatch.setattr(uretinex, "STRIP_PIXELS", 75 * 8)
        strips = pretrained(x)
    torch.testing.assert_close(strips, whole, atol=1e-5, rtol=0)


# -- LOL eval15 -------------------------------------------------------------------------------------


# `lle eval --json` (protocol plain: rounding, full size, ratio 5); the 19.84 / 0.824 is the
# authors' truncated files; the paper's 21.33 dB takes the ratio from the ground truth (evaluate.py)
LOL_PSNR, LOL_SSIM = 19.8597, 0.82392


@pytest.mark.parity
@pytest.mark.slow
def test_lle_eval_on_lol(capsys) -> None:
    lol = shared_path("data", "lol_eval15")
    assert run(capsys, "models", "import", _file("init_low").parent)[0] == 0
    code, out, _ = run(capsys, "eval", lol / "low", lol / "high", "--model", NAME, "--json")
    rep = json.loads(out)
    assert code == 0 and rep["count"] == 15
    assert rep["headline"]["psnr"] == pytest.approx(LOL_PSNR, abs=2e-3)
    assert rep["headline"]["ssim"] == pytest.approx(LOL_SSIM, abs=2e-4)

