"""``jjepa-preprocess fetch`` against a real HTTP server on 127.0.0.1: resume, checksums, tars, layouts.

The server (``RangeServer``) honours ``Range`` requests (``http.server``'s own handler does not),
records every request, and has two switches: cut the connection after K bytes of a body (an
interrupted download) and ignore ``Range`` (a server that always answers 200 with the whole file).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner
from jjepa.common.errors import JJepaError
from jjepa.preprocess.cli import main
from jjepa.preprocess.datasets import SPLITS, PublicDataset, RemoteFile, select_files, split_files
from jjepa.preprocess.fetch import FetchOptions, extract_tar, fetch_dataset, fetch_file, marker_path

RECORD_API_PATH = "api/records/2603256"


@dataclass
class ServerState:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_after: int | None = None  # send only this many body bytes of the next answer, then hang up
    ignore_range: bool = False

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the requests for ``path`` (None: no Range)."""
        return [rng for p, rng in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        path = unquote(self.path.split("?")[0]).lstrip("/")
        requested = self.headers.get("Range")
        state.requests.append((path, requested))
        body = state.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if state.cut_after is not None:
            payload, state.cut_after = payload[:state.cut_after], None
            self.close_connection = True
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    """A Range-capable HTTP server on 127.0.0.1 (a free port) in a thread; yields (state, root URL)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def make_tar(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding ``members`` (name → content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def options(dest: Path, **kwargs) -> FetchOptions:
    return FetchOptions(dest=dest, progress=False, timeout_s=5.0, **kwargs)


# --- one file: resume, checksums ----------------------------------------------------------------------

def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    state, url = server
    source = random_bytes(300_000)
    state.files["files/data.bin"] = source
    state.cut_after = 100_000
    target = tmp_path / "data.bin"

    with pytest.raises(JJepaError, match=re.escape(f"{url}/files/data.bin")) as err:
        fetch_file(f"{url}/files/data.bin", target, md5(source), options(tmp_path))
    assert "rerun" in str(err.value)
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == source[:100_000] and not target.exists()

    report = fetch_file(f"{url}/files/data.bin", target, md5(source), options(tmp_path))
    assert state.gets("files/data.bin") == [None, "bytes=100000-"]
    assert target.read_bytes() == source and not part.exists()
    assert report.status == "downloaded" and report.check == "md5 ok" and "resumed" in report.notes[0]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    state, url = server
    source = random_bytes(200_000, seed=1)
    state.files["files/data.bin"] = source
    state.cut_after = 50_000
    with pytest.raises(JJepaError):
        fetch_file(f"{url}/files/data.bin", tmp_path / "data.bin", md5(source), options(tmp_path))

    state.ignore_range = True
    report = fetch_file(f"{url}/files/data.bin", tmp_path / "data.bin", md5(source), options(tmp_path))
    assert state.gets("files/data.bin")[-1] == "bytes=50000-"  # asked, but answered 200 with everything
    assert (tmp_path / "data.bin").read_bytes() == source and report.notes == []


def test_complete_part_is_verified_and_renamed(server, tmp_path):
    """A run stopped between download and rename: the server answers 416, nothing is downloaded again."""
    state, url = server
    source = random_bytes(30_000, seed=5)
    state.files["files/data.bin"] = source
    (tmp_path / "data.bin.part").write_bytes(source)
    fetch_file(f"{url}/files/data.bin", tmp_path / "data.bin", md5(source), options(tmp_path))
    assert state.gets("files/data.bin") == ["bytes=30000-"] and (tmp_path / "data.bin").read_bytes() == source


def test_checksum_mismatch_removes_the_download(server, tmp_path):
    state, url = server
    source = random_bytes(10_000, seed=2)
    state.files["files/val.h5"] = source
    wrong = "0" * 32
    with pytest.raises(JJepaError) as err:
        fetch_file(f"{url}/files/val.h5", tmp_path / "val.h5", wrong, options(tmp_path))
    message = str(err.value)
    assert "val.h5" in message and wrong in message and md5(source) in message
    assert not (tmp_path / "val.h5").exists() and not (tmp_path / "val.h5.part").exists()


def test_present_file_with_wrong_md5_is_kept_unless_forced(server, tmp_path):
    state, url = server
    source = random_bytes(5_000, seed=3)
    state.files["files/test.h5"] = source
    (tmp_path / "test.h5").write_bytes(b"not the dataset")
    with pytest.raises(JJepaError, match="delete it"):
        fetch_file(f"{url}/files/test.h5", tmp_path / "test.h5", md5(source), options(tmp_path))
    assert (tmp_path / "test.h5").read_bytes() == b"not the dataset" and state.requests == []

    forced = options(tmp_path, force=True)
    report = fetch_file(f"{url}/files/test.h5", tmp_path / "test.h5", md5(source), forced)
    assert report.status == "downloaded" and (tmp_path / "test.h5").read_bytes() == source

    report = fetch_file(f"{url}/files/test.h5", tmp_path / "test.h5", md5(source), options(tmp_path))
    assert report.status == "already present" and len(state.requests) == 1


def test_missing_file_names_the_url(server, tmp_path):
    _, url = server
    with pytest.raises(JJepaError, match=rf"{re.escape(url)}/files/nope\.h5 failed: HTTP 404"):
        fetch_file(f"{url}/files/nope.h5", tmp_path / "nope.h5", None, options(tmp_path))


# --- tars -------------------------------------------------------------------------------------------

def jetclass_spec(url: str, name: str, data: bytes, split: str, extract_to: str) -> PublicDataset:
    """A one-tar JetClass-like dataset served at ``url``/files/, with the tar's real md5."""
    files = (RemoteFile(name, split, md5(data), extract_to=extract_to),)
    return PublicDataset("jetclass", f"{url}/files/", files)


@pytest.mark.parametrize(("member_prefix", "keep"), [("val_5M/", True), ("", False)])
def test_tar_is_extracted_once(server, tmp_path, member_prefix, keep):
    """Members with or without the split folder both land in <dest>/Pythia/val_5M/."""
    state, url = server
    root_file = random_bytes(3_000, seed=4)
    tar = make_tar({f"{member_prefix}HToBB_120.root": root_file, f"{member_prefix}TTBar_120.root": b"top"})
    state.files["files/JetClass_Pythia_val_5M.tar"] = tar
    spec = jetclass_spec(url, "JetClass_Pythia_val_5M.tar", tar, "val", "Pythia/val_5M")
    md5s = {f.name: f.md5 for f in spec.files}

    report = fetch_dataset(spec, spec.files, md5s, options(tmp_path, keep_archives=keep))
    extracted = tmp_path / "Pythia" / "val_5M" / "HToBB_120.root"
    assert extracted.read_bytes() == root_file
    assert not (tmp_path / "Pythia" / "val_5M" / "val_5M").exists()
    assert marker_path(tmp_path, "JetClass_Pythia_val_5M.tar").is_file()
    assert (tmp_path / "JetClass_Pythia_val_5M.tar").exists() == keep
    assert "extracted 2 files" in report.files[0].notes[0]
    assert split_files("jetclass", tmp_path, "val") == [extracted, extracted.with_name("TTBar_120.root")]

    extracted.unlink()  # a re-extraction would bring it back
    again = fetch_dataset(spec, spec.files, md5s, options(tmp_path, keep_archives=keep))
    assert len(state.requests) == 1 and not extracted.exists()
    assert again.files[0].status == "already extracted"
    assert "--dataset jetclass" in again.next_commands[0] and "--split val" in again.next_commands[0]


@pytest.mark.parametrize("member", ["../evil", "/tmp/evil", "Pythia/../../evil"])
def test_unsafe_tar_member_is_refused(server, tmp_path, member):
    state, url = server
    tar = make_tar({"train_100M/HToBB_000.root": b"ok", member: b"evil"})
    state.files["files/part0.tar"] = tar
    spec = jetclass_spec(url, "part0.tar", tar, "train", "Pythia/train_100M")
    dest = tmp_path / "dest"
    with pytest.raises(JJepaError, match="unsafe member"):
        fetch_dataset(spec, spec.files, {"part0.tar": md5(tar)}, options(dest))
    assert not list(tmp_path.rglob("evil")) and not marker_path(dest, "part0.tar").exists()
    assert not (dest / "Pythia").exists(), "nothing of a refused archive is unpacked"


def test_tar_link_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("val_5M/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "x.tar").write_bytes(buffer.getvalue())
    with pytest.raises(JJepaError, match="links"):
        extract_tar(tmp_path / "x.tar", tmp_path, "Pythia/val_5M")


# --- selection and layouts ----------------------------------------------------------------------------

def test_select_files_parts_add_train_parts():
    from jjepa.preprocess.datasets import SPECS, parse_parts

    assert parse_parts("0,3-4,3") == (0, 3, 4)
    names = [f.name for f in select_files(SPECS["jetclass"], splits=["val"], parts=parse_parts("0"))]
    assert names == ["JetClass_Pythia_train_100M_part0.tar", "JetClass_Pythia_val_5M.tar"]
    assert len(select_files(SPECS["qg"], n_files=4)) == 4
    with pytest.raises(JJepaError, match="not \\[10\\]"):
        select_files(SPECS["jetclass"], parts=[10])


def touch(*paths: Path) -> list[Path]:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return sorted(paths)


def test_split_files_toptagging(tmp_path):
    (train,) = touch(tmp_path / "train.h5")
    assert split_files("toptagging", tmp_path, "train", processes=["TTBar"]) == [train]
    with pytest.raises(JJepaError, match=r"test\.h5.*jjepa-preprocess fetch toptagging .* --splits test"):
        split_files("toptagging", tmp_path, "test")


def test_split_files_jetclass(tmp_path):
    folder = tmp_path / "Pythia" / "train_100M"
    touch(*(folder / f"{p}_{n:03d}.root" for p in ("TTBar", "ZJetsToNuNu", "HToBB") for n in (0, 1, 2)))
    (folder / "notes.txt").write_text("not a jet file")
    assert len(split_files("jetclass", tmp_path, "train")) == 9
    chosen = split_files("jetclass", tmp_path, "train", processes=["ZJetsToNuNu", "TTBar"], max_files=2)
    assert [p.name for p in chosen] == ["TTBar_000.root", "TTBar_001.root", "ZJetsToNuNu_000.root",
                                        "ZJetsToNuNu_001.root"]
    with pytest.raises(JJepaError, match="unknown JetClass process.*TTbar"):
        split_files("jetclass", tmp_path, "train", processes=["TTbar"])
    with pytest.raises(JJepaError, match=r"no files of processes \['WToQQ'\]"):
        split_files("jetclass", tmp_path, "train", processes=["TTBar", "WToQQ"])
    with pytest.raises(JJepaError, match=r"test_20M.*fetch jetclass --dest \S+ --splits test$"):
        split_files("jetclass", tmp_path, "test")


def test_split_files_qg(tmp_path):
    touch(*(tmp_path / ("QG_jets.npz" if i == 0 else f"QG_jets_{i}.npz") for i in range(18)))
    train = split_files("qg", tmp_path, "train")
    assert len(train) == 16 and tmp_path / "QG_jets.npz" in train and tmp_path / "QG_jets_15.npz" in train
    assert [p.name for p in split_files("qg", tmp_path, "val")] == ["QG_jets_16.npz", "QG_jets_17.npz"]
    capped = split_files("qg", tmp_path, "train", max_files=2)
    assert [p.name for p in capped] == ["QG_jets.npz", "QG_jets_1.npz"]
    with pytest.raises(JJepaError, match=r"QG_jets_18\.npz … QG_jets_19\.npz.*fetch qg --dest .* --files 20"):
        split_files("qg", tmp_path, "test")


def test_split_files_demo(tmp_path):
    files = touch(tmp_path / "val" / "TTBar_000.root", tmp_path / "val" / "ZJetsToNuNu_000.root")
    assert split_files("demo", tmp_path, "val", processes=["TTBar", "ZJetsToNuNu"]) == files
    with pytest.raises(JJepaError, match="jjepa-preprocess demo"):
        split_files("demo", tmp_path, "train")


# --- the command --------------------------------------------------------------------------------------

@pytest.fixture
def toptagging_server(server):
    """The server holding Top Tagging stand-ins under files/ and their md5s under the record API."""
    state, url = server
    sources = {f"{split}.h5": random_bytes(20_000 + k, seed=10 + k) for k, split in enumerate(SPLITS)}
    state.files.update({f"files/{name}": data for name, data in sources.items()})
    record = {"files": [{"key": name, "checksum": f"md5:{md5(data)}"} for name, data in sources.items()]}
    state.files[RECORD_API_PATH] = json.dumps(record).encode()
    return state, url, sources


def test_cli_fetches_toptagging_end_to_end(toptagging_server, tmp_path):
    state, url, sources = toptagging_server
    args = ["fetch", "toptagging", "--dest", str(tmp_path), "--base-url", f"{url}/files",
            "--record-api", f"{url}/{RECORD_API_PATH}", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name, data in sources.items():
        assert (tmp_path / name).read_bytes() == data
    assert result.output.count("downloaded") == 3 and "md5 ok" in result.output
    assert f"jjepa-preprocess cluster --dataset toptagging --root {tmp_path} --split train" in result.output

    again = CliRunner().invoke(main, args + ["--splits", "val"])
    assert again.exit_code == 0, again.output
    assert "already present" in again.output and len(state.gets("files/val.h5")) == 1


def test_cli_toptagging_without_record_api_needs_checksums(toptagging_server, tmp_path):
    state, url, sources = toptagging_server
    args = ["fetch", "toptagging", "--dest", str(tmp_path), "--base-url", f"{url}/files",
            "--record-api", f"{url}/no/such/api", "--splits", "train", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--checksums" in result.output and "--no-verify" in result.output

    checksums = tmp_path / "md5s.txt"
    checksums.write_text("".join(f"{md5(data)}  {name}\n" for name, data in sources.items()))
    result = CliRunner().invoke(main, args + ["--checksums", str(checksums)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train.h5").read_bytes() == sources["train.h5"]


def test_cli_dry_run_downloads_nothing(server, tmp_path):
    state, url = server
    args = ["fetch", "jetclass", "--dest", str(tmp_path), "--base-url", f"{url}/files", "--splits", "val",
            "--parts", "0,3", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert state.requests == [] and not any(tmp_path.iterdir())
    assert f"{url}/files/JetClass_Pythia_train_100M_part3.tar" in result.output
    assert "7235ccb577ed85023ea3ab4d5e6160cf" in result.output  # the val tar's published md5
    assert "part1" not in result.output and "test_20M" not in result.output


def test_tar_fetched_without_verification_is_never_reported_as_checked(server, tmp_path):
    state, url = server
    tar = make_tar({"HToBB_120.root": b"higgs"})
    state.files["files/JetClass_Pythia_val_5M.tar"] = tar
    spec = jetclass_spec(url, "JetClass_Pythia_val_5M.tar", tar, "val", "Pythia/val_5M")
    unverified = options(tmp_path, verify=False)
    fetch_dataset(spec, spec.files, {}, unverified)
    again = fetch_dataset(spec, spec.files, {}, unverified)
    assert again.files[0].status == "already extracted" and again.files[0].check == "not verified"


def test_cli_refuses_an_empty_selection_and_a_dest_that_is_a_file(tmp_path):
    empty = CliRunner().invoke(main, ["fetch", "qg", "--dest", str(tmp_path), "--splits", ",", "--dry-run"])
    assert empty.exit_code == 1 and "no qg files selected" in empty.output
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["fetch", "qg", "--dest", str(tmp_path / "afile" / "sub"), "--no-verify",
                                       "--base-url", "http://127.0.0.1:9/"])
    assert result.exit_code == 1 and "Not a directory" in result.output and "afile" in result.output
