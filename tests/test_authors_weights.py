"""The authors' released checkpoints by name (``prenet.authors-rain100h``): downloaded from the
authors' GitHub repository on first use, sha256-checked, cached, never bundled.

The download is exercised for real: a small HTTP server on 127.0.0.1 serves the copies in
../shared/reference/prenet/ under the paths raw.githubusercontent.com uses, and
DERAIN_GITHUB_ENDPOINT points derain at it.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from derain_cli.cli import app
from derain_cli.errors import WeightsError
from derain_cli.weights.manifest import load_manifest
from derain_cli.weights.resolve import cached_path, github_url, resolve

from conftest import REFERENCE

PRENET = REFERENCE / "prenet"
needs_prenet_copies = pytest.mark.skipif(
    not PRENET.is_dir(), reason=f"needs the authors' PReNet checkpoints in {PRENET} (the shared reference folder)"
)
runner = CliRunner()
COPIES = {"Rain100L": "prenet6_rain100l.pth", "Rain100H": "prenet6_rain100h.pth", "Rain1400": "prenet6_rain1400.pth"}


class FakeGitHub:
    """Serves files under /{owner}/{repo}/{commit}/{path} like raw.githubusercontent.com."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        github = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                github.requests.append(self.path)
                body = github.files.get(self.path)
                self.send_response(200 if body is not None else 404, None if body is not None else "Not Found")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, name: str, body: bytes) -> None:
        """Serve ``body`` where the manifest entry ``name`` says its file is."""
        self.files[github_url(load_manifest()[name]).removeprefix(self.url)] = body

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github(monkeypatch):
    server = FakeGitHub()
    monkeypatch.setenv("DERAIN_GITHUB_ENDPOINT", server.url)
    for folder, copy in COPIES.items():
        if (PRENET / copy).is_file():
            server.publish(f"prenet.authors-{folder.lower()}", (PRENET / copy).read_bytes())
    yield server
    server.stop()


def test_the_manifest_names_the_authors_files_at_their_commit():
    entries = load_manifest()
    for folder in COPIES:
        entry = entries[f"prenet.authors-{folder.lower()}"]
        assert entry.file is None and entry.hub is None and entry.by_authors and entry.unlicensed
        assert github_url(entry) == ("https://raw.githubusercontent.com/csdwren/PReNet/"
                                     f"6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs/{folder}/PReNet6/net_latest.pth")


@needs_prenet_copies
def test_download_says_no_licence_then_cache_and_offline_hits(github, capsys):
    first = resolve("prenet.authors-rain100h")
    assert first.source == "downloaded" and first.path.read_bytes() == (PRENET / "prenet6_rain100h.pth").read_bytes()
    assert github.requests == ["/csdwren/PReNet/6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs/Rain100H/PReNet6/net_latest.pth"]
    said = capsys.readouterr().err
    assert "authors published no licence" in said and "github:csdwren/PReNet" in said and "never bundles" in said
    assert [p.name for p in first.path.parent.iterdir()] == ["net_latest.pth"]  # no partial download left

    github.requests.clear()
    assert resolve("prenet.authors-rain100h").source == "cache"
    assert resolve("prenet.authors-rain100h", offline=True).source == "cache"
    assert github.requests == [] and capsys.readouterr().err == ""


@needs_prenet_copies
def test_wrong_sha256_is_refused_and_not_cached(github):
    github.publish("prenet.authors-rain100h", (PRENET / "prenet6_rain100l.pth").read_bytes())
    with pytest.raises(WeightsError, match=r"expected 127c0098.*; refused") as info:
        resolve("prenet.authors-rain100h")
    assert "\n" not in str(info.value) and "net_latest.pth" in str(info.value)
    path = cached_path(load_manifest()["prenet.authors-rain100h"])
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_offline_miss_is_one_line_naming_the_file_the_source_and_where_to_put_it(github, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        resolve("prenet.authors-rain1400")
    message = str(info.value)
    entry = load_manifest()["prenet.authors-rain1400"]
    for expected in ("offline", "net_latest.pth", entry.sha256, github_url(entry), str(cached_path(entry))):
        assert expected in message
    assert "\n" not in message and github.requests == []


def test_a_file_the_server_lacks_is_one_line(github):
    github.files.clear()
    with pytest.raises(WeightsError, match=r"could not download prenet.authors-rain1400 from http.*: HTTP 404 Not Found$"):
        resolve("prenet.authors-rain1400")


def test_an_unreachable_server_is_one_line(monkeypatch):
    import socket

    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DERAIN_GITHUB_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsError, match=rf"could not download prenet.authors-rain100l from http://127.0.0.1:{port}/.*refused"):
        resolve("prenet.authors-rain100l")


@needs_prenet_copies
def test_remove_by_name_downloads_and_runs_the_authors_network(github, write_picture, tmp_path):
    src = write_picture()
    out = tmp_path / "clean.png"
    result = runner.invoke(app, ["remove", str(src), "-m", "prenet.authors-rain100l", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "published no licence" in result.stderr
    offline = runner.invoke(app, ["remove", str(src), "-m", "prenet.authors-rain100h", "-o", str(tmp_path / "o.png"),
                                  "--offline"])
    assert offline.exit_code == 3 and "not in the cache and offline mode is on" in offline.output


def test_models_list_prints_its_table_to_stdout_and_says_no_licence():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    for expected in ("prenet.authors-rain100h", "github:csdwren/PReNet", "none published", "published no licence",
                     "lpnet.rain100l"):
        assert expected in result.stdout, expected


def test_published_benchmark_adds_the_authors_checkpoint_for_each_data_set(tmp_path):
    from derain_cli.evaluation.benchmark import authors_checkpoints

    sets = [tmp_path / "rain100h/test", tmp_path / "mine", tmp_path / "Rain100L"]
    assert authors_checkpoints(sets) == {"prenet.authors-rain100l": [sets[2]], "prenet.authors-rain100h": [sets[0]]}


@needs_prenet_copies
def test_published_benchmark_runs_the_authors_weights_beside_ours(github, tmp_path):
    from test_training import make_dataset

    data = make_dataset(tmp_path / "rain100l/test", 1)
    result = runner.invoke(app, ["benchmark", str(data), "-m", "lpnet.rain100l", "--published", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "rain100l" in line]
    assert any("lpnet.rain100l" in r for r in rows) and any("prenet.authors-rain100l" in r and "37.48" in r for r in rows)
    assert github.requests == ["/csdwren/PReNet/6d908d1e3c7ff5c26fee624112297ad1c8603ca7/logs/Rain100L/PReNet6/net_latest.pth"]


def _user_model(root: Path, name: str) -> None:
    (root / "models" / name).mkdir(parents=True)
    (root / "models" / name / "entry.toml").write_text(f'sha256 = "{"0" * 64}"\n')


def test_models_remove_also_removes_the_run_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("DERAIN_DATA_DIR", str(data))
    _user_model(data, "lpnet.mine")
    run = data / "runs/finetune-real/lpnet.mine"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"8 MB of checkpoint")
    removed = runner.invoke(app, ["models", "remove", "lpnet.mine"])
    assert removed.exit_code == 0, removed.output
    assert not (data / "models/lpnet.mine").exists() and not run.exists()
    assert str(run) in " ".join(removed.output.split())

    run.mkdir(parents=True)  # a run stopped before it saved a model: its tag is freed the same way
    assert runner.invoke(app, ["models", "remove", "lpnet.mine"]).exit_code == 0 and not run.exists()
    gone = runner.invoke(app, ["models", "remove", "lpnet.mine"])
    assert gone.exit_code == 2 and "no model of yours named lpnet.mine" in gone.output
