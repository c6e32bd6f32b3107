"""Checkpoint manifest, resolution order, sha256 checks, safe loading and the Hub path.

The Hub is exercised for real: a small HTTP server on 127.0.0.1 answers the way
huggingface.co does (HEAD with X-Repo-Commit / ETag / Content-Length, then GET), and
HF_ENDPOINT points huggingface_hub at it.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from derain_cli.errors import UsageError, WeightsError
from derain_cli.weights import manifest as manifest_module
from derain_cli.weights import resolve as resolve_module
from derain_cli.weights.loading import load_into, read_state_dict
from derain_cli.weights.manifest import load_manifest, split_name
from derain_cli.weights.resolve import parse_hf_url, resolve

from conftest import make_checkpoint

REPO, REVISION = "derain-test/lpnet", "0123456789abcdef0123456789abcdef01234567"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    """Write a manifest (TOML text) and make derain use it, with a private bundled folder."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(resolve_module, "BUNDLED_DIR", bundled)

    def use(text: str) -> Path:
        path = tmp_path / "weights.toml"
        path.write_text(text)
        monkeypatch.setattr(manifest_module, "manifest_path", lambda: path)
        return bundled

    return use


class FakeHub:
    """Serves files under /{repo}/resolve/{revision}/{filename} like the Hugging Face Hub."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                body = hub.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", REVISION)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def do_GET(self):  # noqa: N802
                self._answer(True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, filename: str, body: bytes) -> None:
        self.files[f"/{REPO}/resolve/{REVISION}/{filename}"] = body

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


def _hub_entry(sha: str) -> str:
    return f"""
[lpnet.rain100h]
hub = {{ repo = "{REPO}", filename = "lpnet_rain100h.safetensors", revision = "{REVISION}" }}
sha256 = "{sha}"
license = "MIT"
trained = "test"
"""


def test_the_shipped_manifest_parses():
    entries = load_manifest()
    for entry in entries.values():
        assert [entry.file, entry.hub, entry.github].count(None) == 2


@pytest.mark.parametrize("source, message", [
    ('file = "a.safetensors"\nhub = { repo = "a/b", filename = "f", revision = "main" }', "exactly one of"),
    ('github = { repo = "csdwren/PReNet", path = "net.pth", revision = "6d908d1e" }', "full 40-hex-digit commit"),
    ('github = { repo = "csdwren/PReNet", revision = "' + "0" * 40 + '" }', "github table lacks path"),
    ('github = "https://example.com/net.pth"', "github must be a table"),
])
def test_a_source_must_be_one_pinned_location(manifest, source, message):
    manifest(f'[prenet.x]\n{source}\nsha256 = "{"0" * 64}"\n')
    with pytest.raises(WeightsError, match=message):
        load_manifest()


def test_names_resolve_to_default_tags():
    assert split_name("lpnet") == ("lpnet", "real")  # the default: distilled for real rain (docs/real_rain.md)
    assert split_name("lpnet.rain100h") == ("lpnet", "rain100h")
    with pytest.raises(UsageError, match="unknown method"):
        split_name("jordan.rain100h")


def test_malformed_manifest_is_refused(manifest):
    manifest('[lpnet.x]\nfile = "a.safetensors"\nsha256 = "abc"\n')
    with pytest.raises(WeightsError, match="64-hex-digit sha256"):
        load_manifest()


def test_bundled_file_is_found_and_verified(manifest, tmp_path):
    bundled = manifest("")
    ckpt = make_checkpoint("lpnet", bundled / "lpnet_real.safetensors")
    manifest(f'[lpnet.real]\nfile = "lpnet_real.safetensors"\nsha256 = "{_sha(ckpt)}"\n')
    resolved = resolve("lpnet")
    assert resolved.source == "bundled" and resolved.path == ckpt
    ckpt.write_bytes(ckpt.read_bytes() + b"tampered")
    with pytest.raises(WeightsError, match="does not match"):
        resolve("lpnet")


def test_missing_checkpoint_says_what_to_do(manifest):
    manifest("")
    with pytest.raises(WeightsError, match=r"no checkpoint 'lpnet.real'.*--weights PATH"):
        resolve("lpnet")  # the method's default is not available: weights unavailable (exit 3)
    with pytest.raises(UsageError, match=r"no checkpoint 'lpnet.nosuch'.*--weights PATH"):
        resolve("lpnet.nosuch")  # a name the user spelled out: a usage error (exit 2), like an unknown method


def test_explicit_path_wins_and_must_exist(manifest, tmp_path, lpnet_checkpoint):
    manifest("")
    assert resolve("lpnet", str(lpnet_checkpoint)).path == lpnet_checkpoint
    with pytest.raises(WeightsError, match="not found"):
        resolve("lpnet", str(tmp_path / "nope.pth"))


def test_hub_download_cache_hit_offline_hit_and_corruption(manifest, hub, tmp_path):
    ckpt = make_checkpoint("lpnet", tmp_path / "source.safetensors")
    hub.publish("lpnet_rain100h.safetensors", ckpt.read_bytes())
    manifest(_hub_entry(_sha(ckpt)))

    first = resolve("lpnet.rain100h")  # download
    assert first.source == "downloaded" and first.path.read_bytes() == ckpt.read_bytes()
    assert any(r.startswith("GET") for r in hub.requests)

    hub.requests.clear()
    assert resolve("lpnet.rain100h").source == "cache"  # cache hit: no request at all
    assert hub.requests == []
    assert resolve("lpnet.rain100h", offline=True).source == "cache"

    first.path.write_bytes(b"corrupted in the cache")
    with pytest.raises(WeightsError, match="does not match"):
        resolve("lpnet.rain100h")


def test_hub_file_with_wrong_sha_is_refused_and_not_cached(manifest, hub, tmp_path):
    ckpt = make_checkpoint("lpnet", tmp_path / "source.safetensors")
    hub.publish("lpnet_rain100h.safetensors", ckpt.read_bytes() + b"x")
    manifest(_hub_entry(_sha(ckpt)))
    with pytest.raises(WeightsError, match="refused"):
        resolve("lpnet.rain100h")
    assert not resolve_module.cached_path(load_manifest()["lpnet.rain100h"]).exists()


def test_offline_miss_names_the_file_and_where_to_put_it(manifest, hub, monkeypatch):
    manifest(_hub_entry("0" * 64))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        resolve("lpnet.rain100h")
    message = str(info.value)
    assert "offline" in message and "lpnet_rain100h.safetensors" in message
    assert str(resolve_module.cached_path(load_manifest()["lpnet.rain100h"])) in message
    assert hub.requests == []


def test_hf_url_weights(hub, tmp_path):
    ckpt = make_checkpoint("lpnet", tmp_path / "source.safetensors")
    hub.publish("lpnet_rain100h.safetensors", ckpt.read_bytes())
    url = f"hf://{REPO}/lpnet_rain100h.safetensors@{REVISION}"
    assert resolve("lpnet", url).path.read_bytes() == ckpt.read_bytes()
    assert parse_hf_url("hf://a/b/dir/f.pth") == ("a/b", "dir/f.pth", "main")
    with pytest.raises(UsageError):
        parse_hf_url("hf://a/f.pth")
    with pytest.raises(WeightsError, match="could not download"):
        resolve("lpnet", f"hf://{REPO}/missing.safetensors@{REVISION}")


class Payload:
    pass


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(WeightsError, match=r"not a checkpoint derain can read \(a state dict in .safetensors or "
                       r"\.pth\); UnpicklingError$"):
        read_state_dict(path)


def test_a_torchscript_export_is_named_as_such(tmp_path):
    path = tmp_path / "lpnet.pt"
    torch.jit.trace(torch.nn.Conv2d(3, 3, 1).eval(), torch.zeros(1, 3, 4, 4)).save(str(path))
    with pytest.raises(WeightsError, match="a TorchScript export .*--weights takes the checkpoint it was exported from"):
        read_state_dict(path)


def test_strict_loading_names_the_mismatch(tmp_path, lpnet_checkpoint):
    from derain_cli.methods import get_method

    state = read_state_dict(lpnet_checkpoint)
    state.pop("subnets.0.output.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing: subnets.0.output.bias.*unexpected: extra.weight"):
        load_into(get_method("lpnet").build(), state, "test.safetensors")


def test_pth_state_dicts_and_training_checkpoints_load(tmp_path, lpnet_checkpoint):
    state = read_state_dict(lpnet_checkpoint)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    torch.save({"model": state, "step": 3}, tmp_path / "train.pth")
    for name in ("dp.pth", "train.pth"):
        assert read_state_dict(tmp_path / name).keys() == state.keys()
