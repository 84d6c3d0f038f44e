"""`meshgate models pull REPO/FILE`: download a model file from a Hugging Face-style hub.

Resumable (HTTP Range on a `.part` file), atomic (rename when complete), progress on stderr,
`HF_TOKEN` as bearer token, `MESHGATE_HF_ENDPOINT` (or `HF_ENDPOINT`) to change the hub.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

import httpx

DEFAULT_BASE_URL = "https://huggingface.co"
CHUNK = 1 << 20


class PullError(RuntimeError):
    """A download that cannot go on; the message is meant for the user."""


def split_repo_file(repo_file: str) -> tuple[str, str]:
    """ "org/repo/path/to/model.gguf" -> ("org/repo", "path/to/model.gguf")."""
    parts = repo_file.strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise PullError(f"expected REPO/FILE like 'org/repo/model.gguf', got {repo_file!r}")
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_base_url(default: str = DEFAULT_BASE_URL) -> str:
    return (os.environ.get("MESHGATE_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or default).rstrip("/")


class Progress:
    """A one-line progress bar on stderr, redrawn at most ~10 times a second."""

    def __init__(self, name: str, total: int | None, done: int, stream: TextIO | None = None) -> None:
        self.name, self.total, self.done = name, total, done
        self.stream = stream or sys.stderr
        self.start_done, self.started, self.drawn = done, time.monotonic(), 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = (self.done - self.start_done) / max(now - self.started, 1e-6)
        mib = self.done / 2**20
        if self.total:
            pct = self.done / self.total
            bar = "#" * int(pct * 30)
            line = f"{self.name} [{bar:<30}] {pct:6.1%} {mib:8.1f}/{self.total / 2**20:.1f} MiB"
        else:
            line = f"{self.name} {mib:8.1f} MiB"
        self.stream.write(f"\r{line} {rate / 2**20:6.1f} MiB/s")
        self.stream.flush()

    def finish(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _total_size(response: httpx.Response, offset: int) -> int | None:
    content_range = response.headers.get("content-range", "")  # "bytes 100-199/200"
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return int(length) + offset if length is not None else None


def pull(
    repo_file: str,
    dest_dir: Path,
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    *,
    timeout: float = 30.0,
) -> Path:
    """Download `{base_url}/{repo}/resolve/main/{file}` into `dest_dir/{repo}/{file}`; return its path.

    An existing complete file is returned as is; an interrupted one continues where it stopped.
    `MESHGATE_HF_ENDPOINT` / `HF_ENDPOINT` override `base_url`.
    """
    repo, file = split_repo_file(repo_file)
    base = hub_base_url(base_url)
    target = Path(dest_dir) / repo / file
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    headers = {"user-agent": "meshgate"}
    if token := os.environ.get("HF_TOKEN"):
        headers["authorization"] = f"Bearer {token}"
    if offset:
        headers["range"] = f"bytes={offset}-"
    url = f"{base}/{repo}/resolve/main/{file}"

    with (
        httpx.Client(follow_redirects=True, timeout=timeout) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        total: int | None = offset
        if response.status_code == 416:  # the .part already holds every byte
            pass
        elif response.status_code in (200, 206):
            if response.status_code == 200:
                offset = 0  # server ignored Range: start over
            total = _total_size(response, offset)
            bar = Progress(file, total, offset) if progress else None
            with open(part, "ab" if offset else "wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    if bar:
                        bar.advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if bar:
                bar.finish()
        elif response.status_code in (401, 403):
            raise PullError(f"{url}: access denied ({response.status_code}); set HF_TOKEN for gated models")
        elif response.status_code == 404:
            raise PullError(f"{url}: not found")
        else:
            raise PullError(f"{url}: HTTP {response.status_code}")

    size = part.stat().st_size
    if total is not None and size != total:
        raise PullError(f"{url}: got {size} of {total} bytes; run the command again to resume")
    os.replace(part, target)  # atomic: a file at `target` is always complete
    return target


def main_pull(args: list[str]) -> int:
    """CLI entry: `meshgate models pull REPO/FILE [--dest DIR]`. Prints the path; 0 on success."""
    import argparse

    parser = argparse.ArgumentParser(prog="meshgate models pull")
    parser.add_argument("repo_file", metavar="REPO/FILE", help="e.g. HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/x.gguf")
    parser.add_argument("--dest", type=Path, required=True, help="models folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ns = parser.parse_args(args)
    try:
        path = pull(ns.repo_file, ns.dest, progress=not ns.quiet)
    except (PullError, httpx.HTTPError, OSError) as err:
        print(f"meshgate models pull: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
