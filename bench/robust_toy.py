"""The robust-flow paper's 2D toy experiment: affine vs modified-RQ-spline conditional couplings.

    python bench/robust_toy.py [--net authors|plain] [--steps K] [--iterations N] [--seed S] [--jobs J] [--json PATH]

Hong et al., "On the Robustness of Normalizing Flows for Inverse Problems in Imaging" (ICCV 2023),
Sec. 3.2.1 / 4.1 and appendix A.2 of the preprint (arXiv 2212.04319):

* data: ``x = M u`` with ``u ~ U(-1, 1)^2`` (appendix eq. 1), 100,000 training samples;
* forward model ``y = A x + n``, ``A = [[0.7, 0.3], [0.3, 0.7]]``, ``n ~ N(0, 0.01^2 I)`` (main eq. 7);
* OOD condition ``y_OOD = y_in + [0.8, -0.8]`` (main eq. 8);
* a conditional flow ``x <-> z`` (z standard Gaussian) of K steps ActNorm -> invertible 1x1 conv ->
  conditional coupling whose network sees ``(x1, y)``; fully connected, "four hidden layers with a
  width of 64";
* Adam (0.9, 0.999), learning rate 5e-4, batch 1,000, 8,000 iterations.

The affine coupling is the authors' toy one: ``x2 -> (x2 + t) * s``, ``s = sigmoid(h + 2) + 1e-4``;
the spline coupling is ``x2 -> spline(x2) + t`` with :func:`lle_cli.flows.rqspline.rq_spline`.
After training, one latent sample per condition is pushed through the inverse (sampling) pass for a
fresh in-distribution test set and for the same set shifted out of distribution. The script reports the
variance of the features after every layer (the paper's Fig. 3 and appendix Fig. 2) and the fraction of
samples outside ``[-1, 1]^2`` (the paper's Fig. 2), prints a table and writes JSON.

Coupling networks (``--net``); the text gives only depth and width:

* ``authors`` (default): as the authors' toy code builds it (``FlowAffineCouplingsAblation2dToy.py``,
  ``FlowRQsplineCouplingsAblation2dToy.py``: an input layer plus ``n_hidden_layers = 4``), each layer
  a bias-free linear map (weights N(0, 0.05^2)) followed by a data-initialised ActNorm and ReLU; the
  output layer is the same kind for the affine coupling and zero-initialised, scaled by
  ``exp(3 logs)`` (``Conv2dZeros``), for the spline coupling. The spline toy's layers are
  ``flow.Conv2d`` on 1x1 maps, which is exactly this; the affine toy's ``flow.Linear`` is not in the
  published code and is assumed to be the same (as in glow-pytorch, which the code derives from);
* ``plain``: four plain linear + ReLU hidden layers and a zero-initialised output layer (every
  coupling starts as the identity map, up to the affine coupling's initial scale sigmoid(2)).

Not stated by the paper, so chosen here: K = 4 flow steps by default (the text names the 4th coupling
layer; Fig. 3a, which shows the network, is an image), one latent sample per test condition, 10,000
test conditions, ActNorm initialised from the first batch (Glow), random orthogonal initial 1x1
convolutions. Layers are numbered in sampling order: ``Aff1`` / ``RQs1`` is the first layer applied to
``z``. Runs single-threaded per model (the work is many small ops) and trains the two models in
parallel processes with ``--jobs 2``; results do not depend on ``--jobs``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run against the checkout this script sits in, installed or not

from lle_cli.flows.rqspline import NUM_PARAMS, SplineParams, spline_shift  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "robust_toy.json"

# appendix A.2, eq. 1 (as printed: rows (sqrt(3)/4, -1/10) and (1/4, -sqrt(3)/10))
DATA_MATRIX = ((math.sqrt(3) / 4, -1 / 10), (1 / 4, -math.sqrt(3) / 10))
FORWARD_MATRIX = ((0.7, 0.3), (0.3, 0.7))  # main text eq. 7
NOISE_STD = 0.01
OOD_SHIFT = (0.8, -0.8)  # main text eq. 8
N_TRAIN = 100_000
BATCH = 1_000
ITERATIONS = 8_000
LEARNING_RATE = 5e-4
HIDDEN = 64
HIDDEN_LAYERS = 4
STEPS = 4
AFFINE_EPS = 1e-4
N_TEST = 10_000
BOX = 1.0  # samples are "erroneous" outside [-BOX, BOX]^2
COUPLINGS = ("affine", "rqs")
NETS = ("authors", "plain")
AUTHORS_HIDDEN_LAYERS = 5  # the authors' F(): input layer + n_hidden_layers = 4
AUTHORS_WEIGHT_STD = 0.05


# --- data ------------------------------------------------------------------------------------------


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs ``(x, y_in)`` of the toy inverse problem."""
    u = torch.rand(n, 2, generator=generator) * 2 - 1
    x = u @ torch.tensor(DATA_MATRIX).T
    y = x @ torch.tensor(FORWARD_MATRIX).T + NOISE_STD * torch.randn(n, 2, generator=generator)
    return x, y


# --- a small conditional flow on 2-vectors ---------------------------------------------------------


class ActNorm(nn.Module):
    """Per-dimension ``(x + b) * exp(logs)``, initialised to whiten the first training batch."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.logs = nn.Parameter(torch.zeros(dim))
        self.inited = False

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if reverse:
            return x * torch.exp(-self.logs) - self.bias, -self.logs.sum().expand(x.shape[0])
        if not self.inited and self.training:
            with torch.no_grad():
                self.bias.copy_(-x.mean(0))
                self.logs.copy_(-torch.log(x.std(0, unbiased=False) + 1e-6))
            self.inited = True
        return (x + self.bias) * torch.exp(self.logs), self.logs.sum().expand(x.shape[0])


class LinearActNorm(nn.Linear):
    """Bias-free linear map + ActNorm, the linear form of LLFlow/SRFlow's ``Conv2d``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, bias=False)
        nn.init.normal_(self.weight, 0.0, AUTHORS_WEIGHT_STD)
        self.actnorm = ActNorm(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm(super().forward(x))[0]


class LinearZeros(nn.Linear):
    """Zero-initialised linear map scaled by ``exp(3 logs)``, the linear form of ``Conv2dZeros``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.logs = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.exp(3.0 * self.logs)


def mlp(n_in: int, n_out: int, net: str, kind: str) -> nn.Sequential:
    """The coupling network (see ``--net`` in the module docstring)."""
    mods: list[nn.Module] = []
    width = n_in
    if net == "plain":
        for _ in range(HIDDEN_LAYERS):
            mods += [nn.Linear(width, HIDDEN), nn.ReLU()]
            width = HIDDEN
        last = nn.Linear(width, n_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(*mods, last)
    for _ in range(AUTHORS_HIDDEN_LAYERS):
        mods += [LinearActNorm(width, HIDDEN), nn.ReLU()]
        width = HIDDEN
    mods.append(LinearActNorm(width, n_out) if kind == "affine" else LinearZeros(width, n_out))
    return nn.Sequential(*mods)


class InvConv(nn.Module):
    """Invertible linear map of the two coordinates (Glow's 1x1 convolution), random orthogonal start."""

    def __init__(self, generator: torch.Generator, dim: int = 2) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        self.weight = nn.Parameter(q)

    def forward(self, x: torch.Tensor, y: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])
        if reverse:
            return torch.linalg.solve(self.weight, x.T).T, -logdet
        return x @ self.weight.T, logdet


class Coupling(nn.Module):
    """Conditional coupling: ``x1`` and ``y`` set the transform of ``x2``."""

    def __init__(self, kind: str, net: str) -> None:
        super().__init__()
        self.kind = kind
        self.net = mlp(1 + 2, 2 if kind == "affine" else NUM_PARAMS, net, kind)

    def forward(self, x: torch.Tensor, y: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, :1], x[:, 1:]
        h = self.net(torch.cat([x1, y], dim=1))
        if self.kind == "affine":
            shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + AFFINE_EPS
            x2 = x2 / scale - shift if reverse else (x2 + shift) * scale
            logdet = torch.log(scale).sum(1)
            return torch.cat([x1, x2], dim=1), -logdet if reverse else logdet
        params = SplineParams(*(h[:, i : i + 1] for i in range(NUM_PARAMS)))
        x2, lad = spline_shift(x2, params, inverse=reverse)
        return torch.cat([x1, x2], dim=1), lad.sum(1)


class ConditionalFlow(nn.Module):
    """K steps of ActNorm -> InvConv -> Coupling (density direction ``x -> z``)."""

    def __init__(self, kind: str, steps: int, generator: torch.Generator, net: str = "authors") -> None:
        super().__init__()
        self.kind = kind
        layers: list[nn.Module] = []
        for _ in range(steps):
            layers += [ActNorm(), InvConv(generator), Coupling(kind, net)]
        self.layers = nn.ModuleList(layers)

    def layer_names(self) -> list[str]:
        """Names in sampling order (the order of the paper's Fig. 3): Aff1/RQs1 acts on z first."""
        steps = len(self.layers) // 3
        c = "Aff" if self.kind == "affine" else "RQs"
        return [f"{n}{k}" for k in range(1, steps + 1) for n in (c, "IC", "AN")]

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` and ``log|det dz/dx|`` (the density direction)."""
        logdet = torch.zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, y)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, logdet = self.encode(x, y)
        return -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet

    def sample(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` for latents ``z`` and the features after every layer (sampling order)."""
        feats = []
        for layer in reversed(self.layers):
            z, _ = layer(z, y, reverse=True)
            feats.append(z)
        return z, feats


# --- experiment ------------------------------------------------------------------------------------


def train(kind: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> tuple[ConditionalFlow, dict[str, Any]]:
    torch.manual_seed(args.seed)
    flow = ConditionalFlow(kind, args.steps, torch.Generator().manual_seed(args.seed + 1), args.net)
    opt = torch.optim.Adam(flow.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999))
    order = torch.Generator().manual_seed(args.seed + 2)
    perm = torch.randperm(len(x), generator=order)
    pos, losses, t0, c0 = 0, [], time.perf_counter(), time.process_time()
    flow.train()
    for it in range(1, args.iterations + 1):
        if pos + BATCH > len(x):
            perm, pos = torch.randperm(len(x), generator=order), 0
        idx = perm[pos : pos + BATCH]
        pos += BATCH
        loss = -flow.log_prob(x[idx], y[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if it % max(1, args.iterations // 8) == 0 or it == args.iterations:
            recent = losses[-100:]
            print(f"{kind}: iteration {it}/{args.iterations}, NLL {sum(recent) / len(recent):.3f}", file=sys.stderr)
    flow.eval()
    recent = losses[-100:]
    return flow, {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
        "final_train_nll": sum(recent) / len(recent),
    }


def variance(t: torch.Tensor) -> list[float]:
    """Per-coordinate variance over the samples (inf where a sample is not finite)."""
    finite = torch.isfinite(t).all(1)
    if not finite.all():
        return [math.inf, math.inf]
    return [float(v) for v in t.double().var(0, unbiased=False)]


@torch.no_grad()
def evaluate(flow: ConditionalFlow, x_test: torch.Tensor, y_test: torch.Tensor, z: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {"test_nll_in_distribution": float(-flow.log_prob(x_test, y_test).mean())}
    for cond, y in (("in", y_test), ("ood", y_test + torch.tensor(OOD_SHIFT))):
        x, feats = flow.sample(z, y)
        finite = torch.isfinite(x).all(1)
        out[cond] = {
            "variances": [variance(z)] + [variance(f) for f in feats],
            "fraction_outside_box": float(((x.abs() > BOX).any(1) | ~finite).double().mean()),
            "non_finite": int((~finite).sum()),
            "max_abs": float(x[finite].abs().max()) if finite.any() else math.inf,
        }
        if cond == "in":  # the posterior is narrow (A is invertible, noise 0.01): samples sit near x
            out[cond]["mean_abs_error_to_x"] = float((x - x_test)[finite].abs().mean())
    out["layers"] = ["z", *flow.layer_names()]
    return out


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Largest growth of the total variance (trace of the covariance) across one layer, and the
    largest OOD / in-distribution ratio of it."""
    s: dict[str, Any] = {}
    for cond in ("in", "ood"):
        v = [sum(p) for p in res[cond]["variances"]]
        growth = [(b / a if a > 0 else math.inf) for a, b in zip(v, v[1:])]
        k = max(range(len(growth)), key=growth.__getitem__)
        s[f"{cond}_max_layer_growth"] = growth[k]
        s[f"{cond}_max_growth_layer"] = res["layers"][k + 1]
    ratio = [sum(o) / sum(i) for i, o in zip(res["in"]["variances"], res["ood"]["variances"])]
    k = max(range(len(ratio)), key=ratio.__getitem__)
    s["max_ood_over_in"] = ratio[k]
    s["max_ood_over_in_layer"] = res["layers"][k]
    return s


def fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.3g}"


def print_tables(results: dict[str, dict[str, Any]], title: str) -> None:
    kinds = list(results)
    n_layers = len(results[kinds[0]]["layers"])
    head = ["layer"] + [f"{k} {c}" for k in kinds for c in ("in", "OOD")]
    rows = []
    for i in range(n_layers):
        row = ["/".join(dict.fromkeys(results[k]["layers"][i] for k in kinds))]
        for k in kinds:
            row += [" ".join(fmt(v) for v in results[k][c]["variances"][i]) for c in ("in", "ood")]
        rows.append(row)
    print(title)
    print("Feature variance of (coordinate 1, coordinate 2) after each layer, sampling order z -> x:")
    _table(head, rows)
    print()
    head = ["coupling", "cond", "outside [-1,1]^2", "non-finite", "max |x|", "max 1-layer var growth (layer)", "test NLL", "train CPU s"]
    rows = []
    for k in kinds:
        r = results[k]
        for c in ("in", "ood"):
            s = r["summary"]
            rows.append([k, c, f"{100 * r[c]['fraction_outside_box']:.2f}%", str(r[c]["non_finite"]), fmt(r[c]["max_abs"]),
                         f"{fmt(s[f'{c}_max_layer_growth'])} ({s[f'{c}_max_growth_layer']})",
                         f"{r['test_nll_in_distribution']:.3f}" if c == "in" else "",
                         f"{r['train_cpu_seconds']:.0f}" if c == "in" else ""])
    _table(head, rows)
    print()
    for k in kinds:
        s = results[k]["summary"]
        print(f"{k}: largest OOD/in ratio of the total variance {fmt(s['max_ood_over_in'])} at {s['max_ood_over_in_layer']}")


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def finite_json(obj: Any) -> Any:
    """JSON has no infinity: non-finite numbers are written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one coupling type and evaluate it; everything is derived from ``args.seed``."""
    torch.set_num_threads(args.threads)
    x_train, y_train = make_data(N_TRAIN, torch.Generator().manual_seed(args.seed + 10))
    x_test, y_test = make_data(args.n_test, torch.Generator().manual_seed(args.seed + 11))
    z = torch.randn(args.n_test, 2, generator=torch.Generator().manual_seed(args.seed + 12))
    flow, info = train(kind, args, x_train, y_train)
    res = evaluate(flow, x_test, y_test, z)
    res.update(info)
    res["summary"] = summarise(res)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=ITERATIONS, help=f"training iterations (default {ITERATIONS}, the paper's)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"flow steps K (default {STEPS})")
    p.add_argument("--net", choices=NETS, default="authors", help="coupling network: as the authors' code builds it, or plain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=N_TEST, help=f"test conditions (default {N_TEST})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1: small ops)")
    p.add_argument("--jobs", type=int, default=2, help="models trained in parallel processes (default 2)")
    p.add_argument("--couplings", nargs="+", choices=COUPLINGS, default=list(COUPLINGS))
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if min(args.iterations, args.steps, args.threads, args.jobs) < 1 or args.n_test < 2:
        p.error("--iterations, --steps, --threads, --jobs must be >= 1 and --n-test >= 2")

    t0 = time.perf_counter()
    print(f"training {', '.join(args.couplings)} ({args.net} net, K={args.steps}, {args.iterations} iterations)", file=sys.stderr)
    if args.jobs == 1 or len(args.couplings) == 1:
        results = {kind: run_one(kind, args) for kind in args.couplings}
    else:
        with concurrent.futures.ProcessPoolExecutor(min(args.jobs, len(args.couplings))) as pool:
            futures = {kind: pool.submit(run_one, kind, args) for kind in args.couplings}
            results = {kind: f.result() for kind, f in futures.items()}

    print_tables(results, f"robust toy: {args.net} net, K={args.steps}, {args.iterations} iterations, seed {args.seed}")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads_per_model": args.threads,
        "jobs": args.jobs,
        "cpu": cpu_model(),
        "device": "cpu",
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    config = {
        "data_matrix": DATA_MATRIX, "forward_matrix": FORWARD_MATRIX, "noise_std": NOISE_STD, "ood_shift": OOD_SHIFT,
        "n_train": N_TRAIN, "batch": BATCH, "iterations": args.iterations, "learning_rate": LEARNING_RATE,
        "hidden": HIDDEN, "hidden_layers": HIDDEN_LAYERS, "steps": args.steps, "affine_eps": AFFINE_EPS,
        "n_test": args.n_test, "seed": args.seed, "box": BOX, "net": args.net,
        "net_hidden_layers": HIDDEN_LAYERS if args.net == "plain" else AUTHORS_HIDDEN_LAYERS,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    doc = {"environment": env, "config": config, "results": results, "note": "null: not finite (overflow)"}
    tmp.write_text(json.dumps(finite_json(doc), indent=2, allow_nan=False) + "\n")
    tmp.replace(args.json)
    print(f"wrote {args.json} ({env['total_seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
