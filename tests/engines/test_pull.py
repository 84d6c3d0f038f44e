"""`pull`: download from a hub-shaped local file server, resume after an interruption, atomic result."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from meshgate.engines import pull as pull_module
from meshgate.engines.builtin import smollm2_gguf
from meshgate.engines.gguf import chat_template
from meshgate.engines.pull import PullError, main_pull, pull

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"


@dataclass
class Hub:
    """Serves files at /{repo}/resolve/main/{file} with Range support, like the Hugging Face hub."""

    root: Path
    cut_after: int | None = None  # drop the connection after this many bytes, once
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hub.requests.append({k.lower(): v for k, v in self.headers.items()})
            prefix = "/" + REPO + "/resolve/main/"
            path = hub.root / self.path[len(prefix) :] if self.path.startswith(prefix) else None
            if path is None or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start = 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            with open(path, "rb") as f:
                f.seek(start)
                limit = size - start
                if hub.cut_after is not None:
                    limit, hub.cut_after = hub.cut_after, None
                while limit > 0:
                    chunk = f.read(min(1 << 20, limit))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    limit -= len(chunk)

    return Handler


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    shutil.copyfile(smollm2_gguf(), root / FILE)  # the shipped GGUF, served as if from the hub
    return root


@pytest.fixture
def hub(hub_files: Path) -> Iterator[Hub]:
    state = Hub(hub_files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def sha256(path: Path) -> str:
    return hashlib.file_digest(open(path, "rb"), "sha256").hexdigest()


def test_pull_downloads_a_loadable_gguf(hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url)
    assert path == tmp_path / REPO / FILE
    assert sha256(path) == sha256(hub.root / FILE)
    assert chat_template(path)  # a real GGUF header, readable after the download
    assert not path.with_name(FILE + ".part").exists()
    assert "100.0%" in capsys.readouterr().err  # progress bar on stderr


def test_interrupted_download_resumes_with_range(hub: Hub, tmp_path: Path) -> None:
    hub.cut_after = 10 * 2**20
    with pytest.raises((httpx.HTTPError, PullError)):
        pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url, progress=False)
    part = tmp_path / REPO / (FILE + ".part")
    assert part.stat().st_size == 10 * 2**20
    assert not (tmp_path / REPO / FILE).exists()  # nothing half-written under the final name

    path = pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url, progress=False)
    assert hub.requests[-1]["range"] == f"bytes={10 * 2**20}-"
    assert sha256(path) == sha256(hub.root / FILE)
    assert not part.exists()


def test_complete_part_file_is_finished_on_416(hub: Hub, tmp_path: Path) -> None:
    part = tmp_path / REPO / (FILE + ".part")
    part.parent.mkdir(parents=True)
    shutil.copyfile(hub.root / FILE, part)
    path = pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url, progress=False)
    assert sha256(path) == sha256(hub.root / FILE)


def test_existing_file_is_not_downloaded_again(hub: Hub, tmp_path: Path) -> None:
    pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url, progress=False)
    count = len(hub.requests)
    pull(f"{REPO}/{FILE}", tmp_path, base_url=hub.url, progress=False)
    assert len(hub.requests) == count


def test_token_and_endpoint_from_env(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    pull(f"{REPO}/{FILE}", tmp_path, base_url="http://127.0.0.1:9", progress=False)  # env wins
    assert hub.requests[-1]["authorization"] == "Bearer hf_secret"


def test_errors_are_clear(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHGATE_HF_ENDPOINT", hub.url)
    with pytest.raises(PullError, match="not found"):
        pull(f"{REPO}/missing.gguf", tmp_path, base_url=hub.url, progress=False)
    with pytest.raises(PullError, match="REPO/FILE"):
        pull("just-a-name.gguf", tmp_path, base_url=hub.url)
    assert main_pull([f"{REPO}/missing.gguf", "--dest", str(tmp_path), "--quiet"]) == 1
    assert "not found" in capsys.readouterr().err


def test_main_pull_prints_path(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHGATE_HF_ENDPOINT", hub.url)
    assert main_pull([f"{REPO}/{FILE}", "--dest", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / REPO / FILE)
    assert pull_module.split_repo_file(f"{REPO}/sub/dir/x.gguf") == (REPO, "sub/dir/x.gguf")
