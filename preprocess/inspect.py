"""Summaries of a shard folder for ``jjepa-preprocess inspect``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from jjepa.common.atomic import sha256_file
from jjepa.common.errors import ShardError
from jjepa.common.schema import SCHEMA_VERSION, validate_shard
from jjepa.common.shards import open_memmaps, read_manifest


def _quantiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {}
    q = np.percentile(values, [5, 50, 95])
    return {"mean": round(float(values.mean()), 3), "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]),
            "max": int(values.max())}


#: What every shard of one folder must share (file attributes), and what the manifest says of it.
_LAYOUT_KEYS = ("schema_version", "n_subjets", "n_particles", "algorithm", "radius", "classes", "particle_dtype")
_MIXED_HINT = ("a folder holds the shards of one clustering run: recluster the odd inputs into a folder of "
               "their own (jjepa-preprocess cluster --out ...), or rebuild it with --force")


def _layout_problems(path: Path, manifest, n_jets: int, reference: dict | None) -> tuple[dict, list[str]]:
    """A shard's layout (schema version, S, N, clustering, classes, particle dtype, jets) and what differs.

    Reads the file's attributes and dataset shapes only (no data). Compared against the manifest
    (schema version, S, N, algorithm, R, classes, jet count) and against ``reference``, the first
    shard's layout (everything, including the particle dtype the manifest does not record).
    """
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            layout = {key: attrs[key] for key in _LAYOUT_KEYS if key in attrs}
            layout = {k: ([str(c) for c in v] if k == "classes" else v.item() if hasattr(v, "item") else v)
                      for k, v in layout.items()}
            layout.setdefault("particle_dtype", "float32")
            labels = f.get("labels")
            jets = int(labels.shape[0]) if isinstance(labels, h5py.Dataset) else None
    except OSError as err:
        return {}, [f"cannot open as HDF5 ({err})"]
    expected = {"schema_version": SCHEMA_VERSION, "n_subjets": manifest.cluster.n_subjets,
                "n_particles": manifest.cluster.n_particles, "algorithm": manifest.cluster.algorithm,
                "radius": manifest.cluster.radius, "classes": list(manifest.classes)}
    problems = [f"{key} is {layout.get(key)!r} but the manifest says {value!r} ({_MIXED_HINT})"
                for key, value in expected.items() if layout.get(key) != value]
    if reference:
        problems += [f"{key} is {layout.get(key)!r} but {reference.get(key)!r} in the folder's first shard "
                     f"({_MIXED_HINT})" for key in ("particle_dtype",) if layout.get(key) != reference.get(key)]
    if jets is not None and jets != n_jets:
        problems.append(f"holds {jets} jets but the manifest says {n_jets}")
    return layout, problems


def summarize(folder: str | Path, check: bool = False) -> dict:
    """Jets, classes, multiplicities and config of the shards listed in ``folder/manifest.json``.

    Multiplicities are computed from the memory-mapped masks (subjets per jet, constituents per
    subjet before truncation) and the fraction of jets/subjets that hit the S/N limits.
    Every shard's layout (schema version, S, N, clustering, classes, particle dtype, jet count) is
    checked against the manifest and the first shard, from the attributes alone: a folder mixing
    shards of different runs is listed as a problem. With ``check``, every shard's sha256 and
    contents are verified too; problems are listed.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    n_classes = len(manifest.classes)
    class_counts = np.zeros(n_classes, dtype=np.int64)
    subjets_per_jet, nparts, constituents = [], [], []
    problems: list[str] = []
    reference: dict | None = None  # the first shard's layout: every other must agree with it
    for record in manifest.shards:
        path = folder / record.file
        if not path.exists():
            problems.append(f"{record.file}: listed in the manifest but missing")
            continue
        if check:
            if sha256_file(path) != record.sha256:
                problems.append(f"{record.file}: sha256 differs from the manifest")
            problems += [f"{record.file}: {p}" for p in validate_shard(path, deep=True)]
        layout, mismatch = _layout_problems(path, manifest, record.n_jets, reference)
        reference = reference or layout
        problems += [f"{record.file}: {p}" for p in mismatch]
        try:
            maps = open_memmaps(path)
        except (OSError, KeyError, ShardError) as err:
            problems.append(f"{record.file}: unreadable ({err})")
            continue
        smask = np.asarray(maps["subjet_mask"])
        subjets_per_jet.append(smask.sum(axis=1))
        nparts.append(np.asarray(maps["subjet_nparticles"])[smask])
        constituents.append(np.asarray(maps["jets"])[:, 5])
        if n_classes:
            class_counts += np.asarray(record.class_counts, dtype=np.int64)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))  # noqa: E731
    spj, npt, ncon = cat(subjets_per_jet), cat(nparts), cat(constituents)
    cluster = manifest.cluster
    return {
        "folder": str(folder),
        "n_shards": len(manifest.shards),
        "n_jets": manifest.n_jets,
        "n_skipped": sum(r.n_skipped for r in manifest.shards),
        "classes": dict(zip(manifest.classes, class_counts.tolist(), strict=True)),
        "cluster": {"algorithm": cluster.algorithm, "radius": cluster.radius, "n_subjets": cluster.n_subjets,
                    "n_particles": cluster.n_particles},
        "constituents_per_jet": _quantiles(ncon),
        "subjets_per_jet": _quantiles(spj),
        "constituents_per_subjet": _quantiles(npt),
        "jets_at_subjet_limit": round(float(np.mean(spj >= cluster.n_subjets)), 4) if spj.size else 0.0,
        "subjets_over_particle_limit": round(float(np.mean(npt > cluster.n_particles)), 4) if npt.size else 0.0,
        "sources": sorted({r.source.get("file", "") for r in manifest.shards}),
        "problems": problems,
    }


def format_summary(s: dict) -> str:
    """A human-readable rendering of ``summarize``'s output."""
    c = s["cluster"]
    lines = [
        f"{s['folder']}: {s['n_jets']} jets in {s['n_shards']} shard(s)"
        + (f", {s['n_skipped']} bad jets skipped" if s["n_skipped"] else ""),
        f"clustering: {c['algorithm']} R={c['radius']}, S={c['n_subjets']} subjets x N={c['n_particles']} constituents",
        "classes: " + (", ".join(f"{k}={v}" for k, v in s["classes"].items()) or "unlabeled"),
    ]
    for key in ("constituents_per_jet", "subjets_per_jet", "constituents_per_subjet"):
        q = s[key]
        if q:
            lines.append(f"{key.replace('_', ' ')}: mean {q['mean']}, median {q['median']:g} "
                         f"(5-95%: {q['p5']:g}-{q['p95']:g}), max {q['max']}")
    lines.append(f"jets with >= S subjets: {100 * s['jets_at_subjet_limit']:.2f}%; "
                 f"subjets with > N constituents: {100 * s['subjets_over_particle_limit']:.2f}%")
    lines.append(f"sources: {len(s['sources'])} file(s)")
    lines += [f"PROBLEM {p}" for p in s["problems"]]
    if not s["problems"]:
        lines.append("ok")
    return "\n".join(lines)
