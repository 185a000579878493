"""The public jet datasets ``jjepa-preprocess fetch`` downloads, and where their files lie afterwards.

Pure data and small functions, no network: for each dataset, the remote files (name, md5 when
published, which split they belong to, whether they are tars to unpack) and the layout on disk
after fetching, which ``split_files`` reads back for ``cluster --dataset``. The sources and
checksums are the published ones of Zenodo records 6619768, 2603256 and 3164691 (docs/data.md).

A ``PublicDataset`` is a plain frozen dataclass, so a test or a mirror can build one with its own
files, md5s and URLs and hand it to ``jjepa.preprocess.fetch`` without touching the registry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from jjepa.common.errors import JJepaError

log = logging.getLogger(__name__)

#: The datasets ``fetch`` knows.
PUBLIC_DATASETS: tuple[str, ...] = ("jetclass", "toptagging", "qg")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Simulated stand-ins written by ``jjepa-preprocess demo``: in the JetClass ROOT layout (``demo``) or
#: the Top Tagging HDF5 layout (``demo-toptagging``), one folder per split.
DEMO_DATASETS: tuple[str, ...] = ("demo", "demo-toptagging")
#: The ten JetClass processes, as they appear in its file names ``<Process>_<NNN>.root``.
JETCLASS_PROCESSES: tuple[str, ...] = ("HToBB", "HToCC", "HToGG", "HToWW2Q1L", "HToWW4Q", "TTBar", "TTBarLep",
                                       "WToQQ", "ZToQQ", "ZJetsToNuNu")
#: The JetClass folder of each split, under ``<dest>/Pythia/``.
JETCLASS_SPLIT_DIRS: dict[str, str] = {"train": "train_100M", "val": "val_5M", "test": "test_20M"}
#: Zenodo's record API for the Top Tagging dataset, whose md5s are published only there.
TOPTAGGING_RECORD_API = "https://zenodo.org/api/records/2603256"

_JETCLASS_NAME = re.compile(r"^(?P<process>[A-Za-z0-9]+)_(?P<number>\d+)\.root$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset on the server.

    Args:
        name: file name, both on the server (relative to the dataset's base URL) and in ``--dest``.
        split: the split it holds (``train``, ``val``, ``test``).
        md5: published md5 hex digest; None where it is looked up at fetch time (Top Tagging).
        part: JetClass train part (0–9), for ``--parts``; None otherwise.
        extract_to: for a tar, the folder under ``--dest`` its files belong in. When every member
            already starts with that folder's last component (``val_5M/...``), the tar is unpacked
            into its parent instead, so both tar layouts end up in the same place. None: not a tar.
    """

    name: str
    split: str
    md5: str | None = None
    part: int | None = None
    extract_to: str | None = None


@dataclass(frozen=True)
class PublicDataset:
    """A dataset: where its files are served from and which they are.

    Args:
        name: one of ``PUBLIC_DATASETS`` (selects the layout ``split_files`` expects).
        base_url: folder URL the file names are appended to.
        files: every file of the dataset, in download order.
        record_api: URL of a Zenodo record JSON listing the md5s of files whose ``md5`` is None.
    """

    name: str
    base_url: str
    files: tuple[RemoteFile, ...]
    record_api: str | None = None

    def url(self, file: RemoteFile) -> str:
        """The download URL of ``file``."""
        return f"{self.base_url.rstrip('/')}/{quote(file.name)}"


_JETCLASS_TRAIN_MD5 = ("de4fd2dca2e68ab3c85d5cfd3bcc65c3", "9722a359c5ef697bea0fbf79bf50f003",
                       "1e9f66cd1f915f9d10e90ae1d7761720", "47348fc8985319fa4806da87500482fa",
                       "6b0ce16bd93b442a8d51914466990279", "416e347512e716de51d392bee327b8e9",
                       "e9b9c1557b1b39bf0a16e4ab631ae451", "5bfc6cb285ccb7680cefa9ac82ad1a2e",
                       "540c1a0d66dfad78d2b363c5740ccf86", "668f40b3275167ff7104c48317c0ae2a")
#: md5 of the uds quark–gluon files, index 0 = QG_jets.npz (EnergyFlow's energyflow/datasets/qg_jets.py).
_QG_MD5 = tuple("""
    f5d052f10a79c6e8b9382637aca0ef52 f6a1081c76a47386bc11abcf0e499552 2628367c57ba598f4473c870d1381041
    dd3ad998b0a1bd9acea2ecf029a8a921 a56d6bb98361b55382aa8c06225e05d8 266c688e9e6ff1cd20840692d45eaaf8
    95a9f7e555fb7b1073967056b9030b11 4ae72aaabe121bd489532c99a6bdde95 a2b80bd4199468fde4f302d346a8c9d8
    1157cbace488c70c9dcfc250f3345b06 4b424b553e1e7f852e47ea9904bc2dcf ccd29c9d1abb34dd7cfb48cfc57a9695
    1ed1f6f19fb8439c9811dced41d5127d af45818c361e11ca9b3adaba30db06ad 488ced3ea409d7e2b196da67f7d182ec
    c5e083019de6cd6a0ef12bcec1ea566b 48605d55edff665f0c7d2f800b5a622e 8fd47760957b5fd9adec9048b50cd1a9
    d43d611484b55391e891ba31c605f792 6753508e34014cc69714a01fca20ec38
""".split())
#: Our split of the quark–gluon files (the dataset has none): indices 0–15 train, 16–17 val, 18–19 test.
_QG_SPLIT_STARTS = (("train", 0), ("val", 16), ("test", 18))


def qg_file_name(index: int) -> str:
    """The uds quark–gluon file of ``index``: ``QG_jets.npz`` for 0, else ``QG_jets_<index>.npz``."""
    return "QG_jets.npz" if index == 0 else f"QG_jets_{index}.npz"


def _qg_split(index: int) -> str:
    return [split for split, start in _QG_SPLIT_STARTS if index >= start][-1]


def _jetclass_files() -> tuple[RemoteFile, ...]:
    train = tuple(RemoteFile(f"JetClass_Pythia_train_100M_part{k}.tar", "train", md5, part=k,
                             extract_to="Pythia/train_100M") for k, md5 in enumerate(_JETCLASS_TRAIN_MD5))
    return train + (
        RemoteFile("JetClass_Pythia_val_5M.tar", "val", "7235ccb577ed85023ea3ab4d5e6160cf",
                   extract_to="Pythia/val_5M"),
        RemoteFile("JetClass_Pythia_test_20M.tar", "test", "64e5156d26d101adeb43b8388207d767",
                   extract_to="Pythia/test_20M"),
    )


#: The registry: every dataset ``fetch`` can download, as published on Zenodo.
SPECS: dict[str, PublicDataset] = {
    "jetclass": PublicDataset("jetclass", "https://zenodo.org/record/6619768/files/", _jetclass_files()),
    "toptagging": PublicDataset("toptagging", "https://zenodo.org/record/2603256/files/",
                              tuple(RemoteFile(f"{split}.h5", split) for split in SPLITS),
                              record_api=TOPTAGGING_RECORD_API),
    "qg": PublicDataset("qg", "https://zenodo.org/record/3164691/files/",
                      tuple(RemoteFile(qg_file_name(i), _qg_split(i), md5) for i, md5 in enumerate(_QG_MD5))),
}


def get_spec(dataset: str) -> PublicDataset:
    """The registry entry of ``dataset``, or a ``JJepaError`` listing the known ones."""
    if dataset not in SPECS:
        raise JJepaError(f"unknown dataset {dataset!r}; known: {', '.join(PUBLIC_DATASETS)}")
    return SPECS[dataset]


def parse_parts(text: str) -> tuple[int, ...]:
    """Part numbers from ``"0"``, ``"0,3-4"`` or ``"0-9"``: sorted, without duplicates."""
    parts: set[int] = set()
    for item in (s.strip() for s in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise JJepaError(f"--parts {text!r}: expected numbers and ranges like 0 or 0,3-4")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise JJepaError(f"--parts {text!r}: range {item} runs backwards")
        parts.update(range(first, last + 1))
    return tuple(sorted(parts))


def select_files(spec: PublicDataset, splits: Collection[str] | None = None,
                 parts: Collection[int] | None = None, n_files: int | None = None) -> tuple[RemoteFile, ...]:
    """The files of ``spec`` to fetch, in registry order.

    Args:
        splits: keep files of these splits; None: all.
        parts: JetClass: the train parts to fetch; given, they are fetched even when ``splits``
            leaves out train (``splits=["val"], parts=[0]``: val and train part 0). None: all.
        n_files: keep the first this many files (after the other filters); None: all.
    """
    unknown = set(splits or ()) - set(SPLITS)
    if unknown:
        raise JJepaError(f"unknown split(s) {sorted(unknown)}; choose from {', '.join(SPLITS)}")
    files = [f for f in spec.files if splits is None or f.split in splits]
    if parts is not None:
        known = sorted(f.part for f in spec.files if f.part is not None)
        if not known:
            raise JJepaError(f"--parts applies to jetclass only, not to {spec.name}")
        unknown_parts = sorted(set(parts) - set(known))
        if unknown_parts:
            raise JJepaError(f"{spec.name} has train parts {known[0]}–{known[-1]}, not {unknown_parts}")
        files = [f for f in spec.files if (f.part is None and (splits is None or f.split in splits))
                 or f.part in parts]
    if n_files is not None:
        if n_files < 1:
            raise JJepaError(f"--files must be at least 1, not {n_files}")
        files = files[:n_files]
    if not files:
        raise JJepaError(f"no {spec.name} files selected by splits {sorted(splits or ())}; "
                         f"choose from {', '.join(SPLITS)}")
    return tuple(files)


def split_files(dataset: str, root: str | Path, split: str, processes: Sequence[str] | None = None,
                max_files: int | None = None) -> list[Path]:
    """The input files of one split of a fetched dataset (or of the simulated demo), in file-number order.

    Layouts under ``root`` (the ``--dest`` of ``jjepa-preprocess fetch``):

    - ``jetclass``: ``Pythia/{train_100M,val_5M,test_20M}/<Process>_<NNN>.root``. ``processes``
      keeps only those processes (names as in ``JETCLASS_PROCESSES``); ``max_files`` keeps at
      most that many files per process (the lowest numbers).
    - ``toptagging``: ``<split>.h5``. ``processes`` and ``max_files`` do not apply.
    - ``qg``: the uds files; the dataset has no official split, so ours is train = ``QG_jets.npz``,
      ``QG_jets_1.npz`` … ``QG_jets_15.npz`` (1.6M jets), val = ``_16``, ``_17``, test = ``_18``,
      ``_19`` (200k jets each). ``max_files`` caps the number of files of the split.
    - ``demo``: ``<split>/<Process>_<NNN>.root`` as ``jjepa-preprocess demo`` writes them; like jetclass.
    - ``demo-toptagging``: ``<split>/<split>.h5``, simulated jets in the Top Tagging layout
      (``jjepa-preprocess demo --dataset demo-toptagging``); like toptagging.

    Args:
        dataset: ``jetclass``, ``toptagging``, ``qg``, ``demo`` or ``demo-toptagging``.
        root: the dataset's folder.
        split: ``train``, ``val`` or ``test``.
        processes: jetclass/demo: processes to keep; None: all there are.
        max_files: see above; None: all.

    Raises:
        JJepaError: no such files (the message says where they were expected and which fetch command
            gets them), an unknown dataset, split or process, or a requested process with no files.
    """
    root = Path(root)
    if split not in SPLITS:
        raise JJepaError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if max_files is not None and max_files < 1:
        raise JJepaError(f"max_files must be at least 1 (or None for all), not {max_files}")
    if dataset in ("jetclass", "demo"):
        folder = root / "Pythia" / JETCLASS_SPLIT_DIRS[split] if dataset == "jetclass" else root / split
        return _process_files(dataset, root, split, folder, processes, max_files)
    if processes:
        log.debug("%s has no processes; ignoring processes=%s", dataset, processes)
    if dataset == "demo-toptagging":
        path = root / split / f"{split}.h5"
        if not path.is_file():
            raise JJepaError(f"no simulated Top Tagging {split} file: expected {path}; simulate it with: "
                             f"jjepa-preprocess demo --dataset demo-toptagging --out {root / split} (or dvc repro)")
        return [path]
    if dataset == "toptagging":
        path = root / f"{split}.h5"
        if not path.is_file():
            raise JJepaError(f"no Top Tagging {split} file: expected {path}; get it with: "
                             f"{_fetch_command('toptagging', root, f'--splits {split}')}")
        return [path]
    if dataset == "qg":
        return _qg_files(root, split, max_files)
    raise JJepaError(f"unknown dataset {dataset!r}; known: {', '.join(PUBLIC_DATASETS + DEMO_DATASETS)}")


def _fetch_command(dataset: str, root: Path, options: str) -> str:
    return f"jjepa-preprocess fetch {dataset} --dest {root} {options}"


def _missing_hint(dataset: str, root: Path, split: str) -> str:
    """How to get the files of a JetClass-like split."""
    if dataset == "demo":
        return f"simulate them with: jjepa-preprocess demo --out {root / split} (or dvc repro)"
    options = f"--splits {split}" + (" --parts 0 (or --parts 0-9 for all)" if split == "train" else "")
    return f"get them with: {_fetch_command('jetclass', root, options)}"


def _process_files(dataset: str, root: Path, split: str, folder: Path, processes: Sequence[str] | None,
                   max_files: int | None) -> list[Path]:
    """The ``<Process>_<NNN>.root`` files of ``folder``, filtered by process, capped per process."""
    wanted = _check_processes(processes)
    by_process: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.glob("*.root") if folder.is_dir() else ():
        match = _JETCLASS_NAME.match(path.name)
        if match and match["process"] in wanted:
            by_process.setdefault(match["process"], []).append((int(match["number"]), path))
    if not by_process:
        which = f"of processes {', '.join(wanted)} " if processes else ""
        raise JJepaError(f"no {dataset} {split} files {which}in {folder} (expected <Process>_<NNN>.root, "
                         f"e.g. TTBar_000.root); {_missing_hint(dataset, root, split)}")
    if processes:
        absent = [p for p in wanted if p not in by_process]
        if absent:
            raise JJepaError(f"{folder} has no files of processes {absent} (it has {sorted(by_process)}); "
                             f"{_missing_hint(dataset, root, split)}")
    files = [path for entries in by_process.values() for _, path in sorted(entries)[:max_files]]
    return sorted(files)


def _check_processes(processes: Sequence[str] | None) -> tuple[str, ...]:
    """The processes to keep: all ten when None, else the given ones after checking their names."""
    if not processes:
        return JETCLASS_PROCESSES
    unknown = [p for p in processes if p not in JETCLASS_PROCESSES]
    if unknown:
        raise JJepaError(f"unknown JetClass process(es) {unknown}; known: {', '.join(JETCLASS_PROCESSES)}")
    return tuple(dict.fromkeys(processes))


def _qg_files(root: Path, split: str, max_files: int | None) -> list[Path]:
    """The quark–gluon files of ``split`` that exist under ``root``, capped at ``max_files``."""
    expected = [root / f.name for f in SPECS["qg"].files if f.split == split]
    present = [p for p in expected if p.is_file()]
    if not present:
        n_needed = [f.split for f in SPECS["qg"].files].index(split) + len(expected)
        command = _fetch_command("qg", root, f"--files {n_needed}")
        raise JJepaError(f"no quark–gluon {split} files in {root} (expected {expected[0].name} … "
                         f"{expected[-1].name}); get them with: {command}")
    if len(present) < len(expected):
        log.warning("%s: %d of the %d quark–gluon %s files are there; using those", root, len(present),
                    len(expected), split)
    return present[:max_files]  # registry order: QG_jets, _1, _2, …, _10 (not alphabetical)
