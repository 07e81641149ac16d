"""Whole-process time per image of ``lle enhance`` against the official code path, on the CPU.

    python bench/vs_official.py [--repeats N] [--sizes WxH,...] [--families F ...] [--json PATH]

For each family (``illumination_unet``: RAVE's ``rave_unpaired.pth``; ``zero_dce``: SCL-LLE's
``scl_lle.pth``) and size, one real photo from ``../shared/data`` is resized with PIL, written as a
PNG, and enhanced end to end (read the file, run the network, write an 8-bit PNG) by

* **official**: the way the upstream test scripts do it (RAVE ``inference.py`` at the commit of
  the golden fixtures, SCL-LLE ``lowlight_test.py``): a plain float32 network under
  ``torch.no_grad``, input through PIL and ``ToTensor`` (RAVE) or ``np.asarray(img) / 255.0``
  (SCL-LLE; its permuted tensor happens to be NHWC in memory, so oneDNN runs it channels-last),
  output through ``torchvision.utils.save_image``, and for SCL-LLE the network built and its
  checkpoint loaded again for every image. The official code is
  not a dependency: this script holds its own plain re-implementation of the two networks (written
  here, with the upstream parameter names) and checks it against the golden fixtures made with the
  official code (``../shared/golden``), which shows it is the same computation;
* **lle**: ``lle_cli.batch.run_batch`` on one file, the function ``lle enhance FILE`` calls, with the
  model loaded once by ``lle_cli.api.load_model`` (in-process, so Python start-up is not counted).

Runs are interleaved (official, lle, lle, official, ...) after one warm-up of each, so a machine
shared with other jobs slows both alike; the figure of merit is the ratio of the medians. The
network alone is timed too (fewer runs), and its FLOPs are counted (every convolution, with forward
hooks) to report GFLOP/s and the fraction of the machine's peak (``--peak-gflops``). LLFlow is out of
scope: the project has no trained LLFlow weights yet and no official code path to compare with.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from bench.enhance import environment, parse_sizes, write_results  # noqa: E402
from lle_cli import api  # noqa: E402
from lle_cli._cpu import keep_freed_memory  # noqa: E402
from lle_cli.batch import Job, OutputOptions, run_batch  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402
from lle_cli.weights import sha256_file  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_JSON = ROOT / "bench" / "results" / "vs_official.json"
DEFAULT_SIZES = "600x400,2048x1536"
GOLDEN_RTOL = 1e-5  # relative to the array's largest magnitude, as in tests/models/test_parity.py
GOLDEN_IMAGES = ("backlit_a", "lowlight_a")


# ------------------------------------------------------------------------------------------------
# The official computation, written plainly (NCHW, no fusion, no layout tricks), as the upstream
# modules compute it. Only the parameter names follow upstream, so its checkpoints load unchanged.


class _PlainCurveNet(nn.Module):
    """Zero-DCE / SCL-LLE: seven zero-padded 3x3 convs with skip concatenations, then 8 curve steps."""

    def __init__(self) -> None:
        super().__init__()
        c = 32
        for i, (cin, cout) in enumerate([(3, c), (c, c), (c, c), (c, c), (2 * c, c), (2 * c, c), (2 * c, 24)], 1):
            setattr(self, f"e_conv{i}", nn.Conv2d(cin, cout, 3, 1, 1, bias=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = torch.relu(self.e_conv1(x))
        x2 = torch.relu(self.e_conv2(x1))
        x3 = torch.relu(self.e_conv3(x2))
        x4 = torch.relu(self.e_conv4(x3))
        x5 = torch.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = torch.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        half = x
        for k, rk in enumerate(torch.split(r, 3, dim=1)):
            x = x + rk * (torch.pow(x, 2) - x)
            if k == 3:
                half = x
        return half, x, r


class _PlainResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False, padding_mode="reflect")
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)) + x, 0.2)


class _PlainPPM(nn.Module):
    def __init__(self, c: int, red: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c, red, 1, bias=False), nn.PReLU()) for b in bins
        )
        self.fuse = nn.Sequential(nn.Conv2d(c + red * len(bins), c, 3, padding=1, bias=False), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True) for f in self.features]
        return self.fuse(torch.cat([x, *up], 1))


class _PlainIlluminationUNet(nn.Module):
    """CLIP-LIT / RAVE UNet as RAVE's inference builds it (reflect padding on the outer convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond1 = nn.Conv2d(3, 32, 3, 1, 1, bias=True, padding_mode="reflect")
        self.cond_add1 = nn.Conv2d(32, 1, 3, 1, 1, bias=True, padding_mode="reflect")
        self.condx = nn.Conv2d(32, 64, 3, 1, 1, bias=True, padding_mode="reflect")
        self.condy = nn.Conv2d(64, 32, 3, 1, 1, bias=True, padding_mode="reflect")
        for i, c in enumerate((32, 32, 64, 64, 32, 32), 1):
            setattr(self, f"ResidualBlock{i}", _PlainResBlock(c))
        self.PPM1 = _PlainPPM(32, 8, (1, 2, 3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the light map
        h = self.ResidualBlock2(self.ResidualBlock1(F.leaky_relu(self.cond1(x), 0.2)))
        h = self.condx(self.PPM1(h))
        h = self.condy(self.ResidualBlock4(self.ResidualBlock3(h)))
        return torch.relu(self.cond_add1(self.ResidualBlock6(self.ResidualBlock5(h))))


def _official_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}  # RAVE saved a DataParallel


def _read_numpy(path: Path) -> torch.Tensor:
    """SCL-LLE ``lowlight_test.py``: float64 ``/ 255``, then a permuted (NHWC-strided) float tensor."""
    arr = np.asarray(Image.open(path)) / 255.0
    return torch.from_numpy(arr).float().permute(2, 0, 1).unsqueeze(0)


def _read_to_tensor(path: Path) -> torch.Tensor:
    """RAVE ``inference.py`` (``create_transform``): torchvision's ``ToTensor``, a contiguous NCHW tensor."""
    from torchvision import transforms

    return transforms.ToTensor()(Image.open(path)).unsqueeze(0)


def _official_write(img: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image  # upstream's writer (PIL PNG, default compression)

    save_image(img, str(path))


@dataclass
class Family:
    name: str  # lle family
    model: str  # registry name
    weights: str  # file in ../shared/upstream/weights
    photo: str  # source photo under ../shared/data
    golden: Callable[[str], Path]  # golden enhanced image for a golden input name
    build: Callable[[], nn.Module]
    load_per_image: bool  # the upstream script reloads the model for every image
    read: Callable[[Path], torch.Tensor]  # the upstream script's image -> tensor
    enhance: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # network -> enhanced image


FAMILIES = {
    "illumination_unet": Family(
        "illumination_unet", "rave.unpaired", "rave_unpaired.pth", "backlit/110_51093502029_o.jpg",
        lambda img: SHARED / "golden" / "unet" / "rave_unpaired" / f"{img}_enhanced.npy",
        _PlainIlluminationUNet, False, _read_to_tensor, lambda net, x: torch.clamp(x / net(x), 0, 1),
    ),
    "zero_dce": Family(
        "zero_dce", "scl-lle.official", "scl_lle.pth", "lol_eval15/low/1.png",
        lambda img: SHARED / "golden" / "scllle" / f"{img}_enhance_image.npy",
        _PlainCurveNet, True, _read_numpy, lambda net, x: net(x)[1],
    ),
}


def _official_net(fam: Family, weights: Path) -> nn.Module:
    net = fam.build()
    net.load_state_dict(_official_state(weights))
    return net.eval()


def official_enhance_file(fam: Family, weights: Path, net: nn.Module | None, src: Path, dst: Path) -> None:
    """One image the upstream way: read, (re)load the model if the script does, run, save_image."""
    with torch.no_grad():
        x = fam.read(src)
        if fam.load_per_image or net is None:
            net = _official_net(fam, weights)
        _official_write(fam.enhance(net, x), dst)


def check_golden(fam: Family, net: nn.Module) -> float:
    """Largest relative error of the plain network against the official code's fixtures."""
    worst = 0.0
    for img in GOLDEN_IMAGES:
        x = torch.from_numpy(np.load(SHARED / "golden" / "inputs" / f"{img}_float.npy"))
        golden = np.load(fam.golden(img))
        with torch.no_grad():
            y = fam.enhance(net, x).numpy()
        worst = max(worst, float(np.abs(y - golden).max() / np.abs(golden).max()))
    return worst


def conv_flops(net: nn.Module, x: torch.Tensor, fam: Family) -> int:
    """2 x multiply-accumulates of every convolution for one forward pass (other ops are < 1%)."""
    macs = 0

    def hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = mod.kernel_size
        macs += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            fam.enhance(net, x)
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


# ------------------------------------------------------------------------------------------------


def stats(times: list[float]) -> dict[str, Any]:
    return {
        "times_s": [round(t, 4) for t in times],
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds of ``repeats`` runs of each, alternating the order every round (ABBA...).

    CPU time (all threads) is the steadier figure on a machine other jobs are using: it counts the
    work done, not the time spent waiting for a core.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for n in names if i % 2 == 0 else reversed(names):
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return wall, cpu


def bench_family(fam: Family, sizes: list[tuple[int, int]], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    weights = SHARED / "upstream" / "weights" / fam.weights
    entry = get_registry().resolve(fam.model)
    if entry.upstream is None or sha256_file(weights) != entry.upstream.sha256:
        raise SystemExit(f"{weights}: not the authors' checkpoint for {fam.model} (sha256 differs from the manifest)")
    plain = _official_net(fam, weights)
    golden_err = check_golden(fam, plain)
    print(f"{fam.name}: official re-implementation vs golden fixtures, relative error {golden_err:.1e}", file=sys.stderr)
    if golden_err > GOLDEN_RTOL:
        raise SystemExit(f"{fam.name}: the baseline does not reproduce the official outputs ({golden_err:.1e} > {GOLDEN_RTOL:.0e})")
    keep_freed_memory()  # as the lle command does (process-wide: the baseline gets it too)
    model = api.load_model(fam.model, weights=weights, device="cpu", precision="fp32")
    opts = OutputOptions(overwrite=True)
    rows = []
    photo = Image.open(SHARED / "data" / fam.photo).convert("RGB")
    for w, h in sizes:
        src = tmp / f"{fam.name}_{w}x{h}.png"
        photo.resize((w, h), Image.LANCZOS).save(src)
        out_official, out_lle = tmp / f"{src.stem}_official.png", tmp / f"{src.stem}_lle.png"

        def run_lle() -> None:
            (res,) = run_batch(model, [Job(str(src), str(out_lle))], opts)
            if res.status != "ok":
                raise SystemExit(f"lle failed on {src}: {res.error}")

        print(f"  {w}x{h}: whole process, {args.repeats} interleaved runs each", file=sys.stderr)
        whole, whole_cpu = interleaved(
            {"official": lambda: official_enhance_file(fam, weights, plain, src, out_official), "lle": run_lle},
            args.repeats,
        )
        a = np.asarray(Image.open(out_official).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(out_lle).convert("RGB"), dtype=np.int16)
        diff = int(np.abs(a - b).max())
        if diff > 1:
            raise SystemExit(f"{fam.name} {w}x{h}: lle's PNG differs from the official one by {diff} levels (> 1)")

        x = fam.read(src)
        flops = conv_flops(plain, x, fam)
        row: dict[str, Any] = {
            "family": fam.name,
            "model": fam.model,
            "weights": fam.weights,
            "size": f"{w}x{h}",
            "official": stats(whole["official"]),
            "lle": stats(whole["lle"]),
            "speedup": round(statistics.median(whole["official"]) / statistics.median(whole["lle"]), 3),
            "official_cpu": stats(whole_cpu["official"]),
            "lle_cpu": stats(whole_cpu["lle"]),
            "speedup_cpu": round(statistics.median(whole_cpu["official"]) / statistics.median(whole_cpu["lle"]), 3),
            "gflop": round(flops / 1e9, 2),
            "max_level_diff_8bit": diff,
            "png_bytes": {"official": out_official.stat().st_size, "lle": out_lle.stat().st_size},
            "golden_rel_err": float(f"{golden_err:.2e}"),
        }
        if args.compute_repeats:
            print(f"  {w}x{h}: network only, {args.compute_repeats} interleaved runs each", file=sys.stderr)

            def net_official() -> None:
                with torch.no_grad():
                    fam.enhance(plain, x)

            net, net_cpu = interleaved({"official": net_official, "lle": lambda: model.enhance_tensor(x)}, args.compute_repeats)
            per_core = args.peak_gflops / (os.cpu_count() or 1)
            for k in ("official", "lle"):
                med = statistics.median(net[k])
                row[f"network_{k}"] = stats(net[k])
                gfs = flops / med / 1e9
                gf_cpu = flops / statistics.median(net_cpu[k]) / 1e9  # per CPU-second: per busy core
                row[f"network_{k}"].update(
                    gflop_per_s=round(gfs, 1), peak_fraction=round(gfs / args.peak_gflops, 3),
                    cpu_s=stats(net_cpu[k]), gflop_per_cpu_s=round(gf_cpu, 1), core_peak_fraction=round(gf_cpu / per_core, 3),
                )
            row["network_speedup"] = round(statistics.median(net["official"]) / statistics.median(net["lle"]), 3)
            row["network_speedup_cpu"] = round(statistics.median(net_cpu["official"]) / statistics.median(net_cpu["lle"]), 3)
        for k in ("official", "lle"):
            gfs = flops / row[k]["median_s"] / 1e9
            row[k].update(gflop_per_s=round(gfs, 1), peak_fraction=round(gfs / args.peak_gflops, 3))
        rows.append(row)
        print_table([row])
    return rows


def print_table(rows: list[dict[str, Any]], header: bool = True) -> None:
    cols = ["family", "size", "official min/med/max s", "lle min/med/max s", "speedup", "CPU-time speedup", "GFLOP",
            "net GFLOP/s off/lle", "% peak off/lle", "% core peak (CPU time) off/lle", "max diff"]
    cells = []
    for r in rows:
        net_o, net_l = r.get("network_official", r["official"]), r.get("network_lle", r["lle"])
        cells.append([
            r["family"], r["size"],
            f"{r['official']['min_s']:.3f}/{r['official']['median_s']:.3f}/{r['official']['max_s']:.3f}",
            f"{r['lle']['min_s']:.3f}/{r['lle']['median_s']:.3f}/{r['lle']['max_s']:.3f}",
            f"{r['speedup']:.2f}x", f"{r['speedup_cpu']:.2f}x", f"{r['gflop']:.1f}",
            f"{net_o['gflop_per_s']:.0f}/{net_l['gflop_per_s']:.0f}",
            f"{100 * net_o['peak_fraction']:.0f}/{100 * net_l['peak_fraction']:.0f}",
            f"{100 * net_o.get('core_peak_fraction', 0):.0f}/{100 * net_l.get('core_peak_fraction', 0):.0f}",
            str(r["max_level_diff_8bit"]),
        ])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(cols)]
    lines = ([cols, ["-" * w for w in widths]] if header else []) + cells
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed whole-process runs of each, after one warm-up (default 5)")
    p.add_argument("--compute-repeats", type=int, default=3, help="timed network-only runs of each (default 3; 0 skips)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--peak-gflops", type=float, default=190.0, help="the machine's fp32 peak (default 190: 2 cores, AVX2 FMA)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.compute_repeats < 0:
        p.error("--repeats must be at least 1 and --compute-repeats at least 0")
    if not (SHARED / "golden").is_dir() or not (SHARED / "upstream" / "weights").is_dir():
        p.error(f"{SHARED} (golden fixtures and upstream weights) is missing")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    env = environment(
        peak_gflops=args.peak_gflops,
        note="machine shared with other jobs; official and lle runs interleaved so the ratio of medians is fair",
        baseline="plain fp32 nets under no_grad; input PIL + ToTensor (RAVE inference.py) or np/255 + permute "
        "(SCL-LLE lowlight_test.py); output torchvision save_image (Pillow PNG, level 6); SCL-LLE model built "
        "and loaded per image, RAVE model loaded once",
        out_of_scope={"llflow": "no trained LLFlow weights in the project and no official single-image path to compare"},
    )
    print(f"torch {env['threads']} threads, {env['cpu']}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lle-vs-official-") as tmp:
        for name in args.families:
            rows.extend(bench_family(FAMILIES[name], args.sizes, args, Path(tmp)))
    print()
    print_table(rows)
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
