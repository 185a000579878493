"""Which jets a run reads: a fingerprint of a shard set, the same jets on resume, disjoint splits.

A run names its shard folders by path, but what it learns from is the jets in them. Each folder's
``manifest.json`` records every shard's sha256 and the source of its jets (input file and entry
range), so these checks read no jet:

- ``fingerprint``: a shard set's clustering and a digest of its shards' sha256s. Checkpoints store it,
  and ``check_same_jets`` refuses to resume on other jets behind the same path (a folder rebuilt or
  swapped between a run's start and its ``--resume``).
- ``check_same_clustering``: subjets of another algorithm or radius than a model or another set was
  made from are refused, even where S and N agree.
- ``check_disjoint``: training, validation and test sets must not share jets, i.e. neither the same
  shard (equal sha256) nor overlapping entries of the same input. An input is known by its content
  sha256 where the manifest's plan fingerprinted it (``jjepa-preprocess cluster`` does), else by the
  path it was given as. Test figures from jets the tagger was trained or selected on would be too good.
"""

from __future__ import annotations

import hashlib
import re
from itertools import combinations
from pathlib import Path

from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.schema import config_dict
from jjepa.common.shards import Manifest

_SHARD_INDEX = re.compile(r"shard-(\d+)\.h5$")


def fingerprint(folder: str | Path, manifest: Manifest) -> dict:
    """What names a shard set's jets: its clustering, jet count and the sha256 of its shards' sha256s."""
    digest = hashlib.sha256("\n".join(r.sha256 for r in manifest.shards).encode()).hexdigest()
    return {"folder": str(folder), "cluster": config_dict(manifest.cluster),
            "n_jets": int(sum(r.n_jets for r in manifest.shards)), "shards_sha256": digest}


def check_same_jets(saved: dict | None, now: dict, role: str, checkpoint: str | Path) -> None:
    """Refuse to resume ``checkpoint`` when its ``role`` set (e.g. ``training``) is not the one it started on.

    ``saved`` is None for checkpoints written before fingerprints: nothing to compare.
    """
    if saved is None or (saved["shards_sha256"], saved["cluster"]) == (now["shards_sha256"], now["cluster"]):
        return
    raise JJepaError(f"cannot resume {checkpoint}: the {role} shards in {now['folder']} ({now['n_jets']} jets) are "
                     f"not those the run started on ({saved['n_jets']} jets in {saved['folder']}); resume with "
                     "those shards, or start a new run (--out)")


def check_same_clustering(cluster: dict, folder: str | Path, manifest: Manifest, what: str) -> None:
    """Refuse the shards of ``folder`` if clustered otherwise (algorithm, radius) than ``cluster``.

    ``what`` completes the message: ``"the training shards in X have"``, ``"the encoder X was pretrained
    on"``. S and N are checked where the model is bound to the shards (``ShardSet.bind``).
    """
    have = config_dict(manifest.cluster)
    for key in ("algorithm", "radius"):
        if key in cluster and cluster[key] != have[key]:
            raise ShardError(f"{folder}: subjets clustered with {key}={have[key]}, but {what} {key}={cluster[key]}; "
                             f"recluster with `jjepa-preprocess cluster --{key} {cluster[key]}`")


def check_encoder_clustering(state: dict, checkpoint: str | Path, folder: str | Path, manifest: Manifest) -> None:
    """``check_same_clustering`` against what the pretraining checkpoint ``state`` was trained on (checkpoints
    written before fingerprints record nothing to compare)."""
    if state.get("data"):
        check_same_clustering(state["data"]["cluster"], folder, manifest, f"the encoder {checkpoint} was pretrained on")


def _sources(manifest: Manifest) -> list[tuple[str, str, int, int]]:
    """Per shard: (its file, the input's key, first entry, entry after the last) of the jets it holds."""
    plan = manifest.plan or {}
    inputs, chunks = plan.get("inputs") or [], plan.get("chunks") or []
    sources = []
    for record in manifest.shards:
        source = record.source or {}
        if not {"file", "start", "stop"} <= set(source):
            continue
        key = str(source["file"])
        match = _SHARD_INDEX.search(record.file)
        if match and int(match[1]) < len(chunks):  # plan v2: chunks name inputs by position
            position = chunks[int(match[1])][0]
            if isinstance(position, int) and position < len(inputs) and isinstance(inputs[position], dict):
                key = inputs[position].get("sha256", key)
        sources.append((record.file, key, int(source["start"]), int(source["stop"])))
    return sources


def check_disjoint(sets: dict[str, tuple[str | Path, Manifest]]) -> None:
    """Refuse shard sets that share jets.

    Args:
        sets: role (``--train``, ``--val``, ``--test``) → (folder, manifest).

    Raises:
        JJepaError: naming both sets, a shard of each and what they share.
    """
    for (role_a, (folder_a, a)), (role_b, (folder_b, b)) in combinations(sets.items(), 2):
        same_file = {r.sha256: r.file for r in a.shards}
        for record in b.shards:
            if record.sha256 in same_file:
                raise JJepaError(f"{role_a} {Path(folder_a) / same_file[record.sha256]} and {role_b} "
                                 f"{Path(folder_b) / record.file} are the same shard: the sets share jets; give "
                                 "each split its own jets (e.g. clustered from different input files)")
        by_key: dict[str, list[tuple[str, int, int]]] = {}
        for file, key, start, stop in _sources(a):
            by_key.setdefault(key, []).append((file, start, stop))
        for file_b, key, start_b, stop_b in _sources(b):
            for file_a, start_a, stop_a in by_key.get(key, []):
                if start_a < stop_b and start_b < stop_a:
                    raise JJepaError(
                        f"{role_a} {Path(folder_a) / file_a} (entries {start_a}–{stop_a}) and {role_b} "
                        f"{Path(folder_b) / file_b} (entries {start_b}–{stop_b}) hold the same jets of one input "
                        "file: the sets share jets; cluster each split from its own inputs or entry ranges")
