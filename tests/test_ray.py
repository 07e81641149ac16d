"""``--ray local``: a private Ray cluster, inside a loopback-only network namespace.

Ray's services listen on every interface, so every test here runs lle in a network namespace whose
only interface is loopback (``unshare -n``, then ``ip link set lo up``): nothing leaves the
machine. Skipped (with the reason) when the ``ray`` extra is missing or namespaces are not
permitted; under ``LLE_REQUIRE_SHARED=1`` (CI, which installs ``.[test,all]``) a missing ray fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import record
from lle_cli.cli.main import main

pytestmark = pytest.mark.slow  # a cluster takes ~10 s to start here


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    try:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    return None if r.returncode == 0 else f"a network namespace is not permitted here: {r.stderr.strip()[:200]}"


@pytest.fixture(scope="module")
def isolated() -> None:
    if importlib.util.find_spec("ray") is None:
        msg = 'ray is not installed (pip install "lle-cli[ray]")'
        if os.environ.get("LLE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and LLE_REQUIRE_SHARED=1: CI installs .[test,all]")
        pytest.skip(msg)
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)


def lle_in_namespace(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``lle ARGS`` in a loopback-only network namespace, with Ray's usage statistics off."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "LLE_RAY_WATCHDOG_S": "240"}
    cmd = " ".join(["exec", sys.executable, "-m", "lle_cli", *(f"'{a}'" for a in args)])
    return subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && {cmd}"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600, check=False)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_ray_local_matches_a_local_run(isolated, capsys, tmp_path, rng) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray((rng.random((24, 32, 3)) * 90).astype(np.uint8)).save(photos / f"p{i}.png")
    # 16-bit grey: read and written by lle's own I/O in the actor, as in a local run
    Image.fromarray((rng.random((20, 20)) * 9000).astype(np.uint16)).save(photos / "g16.png")
    (photos / "bad.png").write_bytes(b"not a png")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert main(["enhance", str(photos), "-o", f"{local}/", "-q"]) == 1
    capsys.readouterr()
    before = set(Path("/tmp").glob("lle-ray-*"))

    r = lle_in_namespace("enhance", str(photos), "-o", f"{distributed}/", "--ray", "local", "--workers", "2",
                         "--threads-per-worker", "1", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(x["status"] for x in lines) == ["error"] + ["ok"] * 6
    assert [x["input"] for x in lines if x["status"] == "error"] == [str(photos / "bad.png")]
    written = sorted(p.name for p in distributed.glob("*.png"))
    assert written == sorted(p.name for p in local.glob("*.png")) and len(written) == 6
    for name in written:
        assert sha(distributed / name) == sha(local / name), name
    run, reference = record.read_runs(distributed)[0], record.read_runs(local)[0]
    key = lambda o: (o["file"], o["sha256"], o["input"], o["input_sha256"])
    assert [key(o) for o in run["outputs"]] == [key(o) for o in reference["outputs"]]
    assert run["parallel"]["ray"] == "local" and run["seconds"] > 0
    assert set(Path("/tmp").glob("lle-ray-*")) == before  # the private cluster's folder is gone

    again = lle_in_namespace("enhance", str(photos), "-o", f"{distributed}/", "--ray", "local", "--skip-existing", "--json",
                             cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    statuses = sorted(json.loads(x)["status"] for x in again.stdout.splitlines())
    assert statuses == ["error"] + ["skipped"] * 6
    assert {p.name: sha(p) for p in distributed.glob("*.png")} == {n: sha(local / n) for n in written}
