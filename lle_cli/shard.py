"""``--shard K/N``: split one batch into N disjoint parts for job arrays (SLURM, Kubernetes indexed jobs).

Every shard plans the *whole* batch first (so clashes and existing outputs are judged the same way
in every shard), then keeps the inputs whose key hashes to its number. The key is each input's path
relative to the folder it was found in (a file named on the command line: its name), so machines
that mount the data at different places, or list it in another order, still agree; sha256 makes
the split independent of Python's per-process string hashing. The parts are disjoint and together
cover the batch whatever order the shards run in.

Each shard writes its own run record, ``lle-run.K-of-N.json``, with what it was given and what
became of each input; ``lle runs merge`` (``lle_cli.runs``) joins them once all have finished.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .naming import shard_record_name

__all__ = ["Shard", "inputs_digest", "parse_shard", "select", "shard_key", "shard_number"]

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # K: 1-based, as SLURM_ARRAY_TASK_ID usually is with --array=1-N
    count: int  # N

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def record_name(self) -> str:
        """``lle-run.K-of-N.json``; ``record.read_runs`` reads it as any other ``lle-run.*.json``."""
        return shard_record_name(self.index, self.count)

    def fields(self, digest: str, total: int, assigned: int) -> dict[str, Any]:
        """What a shard's run record says about the split, so a merge can check that the set is whole."""
        return {"index": self.index, "count": self.count, "key": "sha256(relative path) mod N",
                "inputs_digest": digest, "inputs_total": total, "inputs_assigned": assigned}


def parse_shard(text: str | None) -> Shard | None:
    """``"K/N"`` with 1 <= K <= N, or ``UsageError`` in one line (exit 2) before any work."""
    if text is None:
        return None
    m = _SPEC.match(text)
    if m is None:
        raise UsageError(f"--shard {text}: expected K/N, two whole numbers with 1 <= K <= N (e.g. --shard 1/4)")
    k, n = int(m[1]), int(m[2])
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be from 1 to N (N >= 1); for N shards run --shard 1/N ... --shard N/N")
    return Shard(k, n)


def shard_key(path: str, roots: Sequence[Path]) -> str:
    """The path relative to the first input folder holding it (POSIX form); else its file name."""
    p = Path(path)
    for root in roots:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            continue
    return p.name


def shard_number(key: str, count: int) -> int:
    """1..count for ``key``: sha256 of its UTF-8 bytes, mod count."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") % count + 1


def input_roots(inputs: Iterable[str]) -> list[Path]:
    """The folders among the command line's inputs, longest first (a nested one is the closer root)."""
    return sorted((Path(i) for i in inputs if i != "-" and Path(i).is_dir()), key=lambda p: len(p.parts), reverse=True)


def select(paths: Sequence[str], inputs: Iterable[str], shard: Shard) -> tuple[list[bool], str]:
    """Which of ``paths`` (the whole batch's inputs, in order) belong to ``shard``, and a digest of
    the whole list's keys (equal in every shard of one batch: a merge refuses records that differ)."""
    roots = input_roots(inputs)
    keys = [shard_key(p, roots) for p in paths]
    return [shard_number(k, shard.count) == shard.index for k in keys], inputs_digest(keys)


def inputs_digest(keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()
