#!/usr/bin/env python3
"""Gateway-overhead benchmark for meshgate (loopback only, every load run bounded).

Two modes:

  peer (default)  Prepares a throw-away MESHGATE_HOME (catalog routing `mock-model` and
                  `mock-model-delay5` to the shared mock upstream, large daily quotas, an
                  account and an API key made with the `meshgate` CLI) and runs the shared
                  peer harness (`../shared/bench/run_peer.sh`) with meshgate as a gateway,
                  by default next to LiteLLM and the direct path: requests/s, p50/p90/p99,
                  added p50/p99 against direct, gateway CPU µs/request and RSS for
                  non-streaming and 16-chunk streaming chat at each concurrency, plus
                  time-to-first-token overhead. Auth, quota reservation, settlement (a
                  SQLite commit per request) and usage history are all on.

  soak            Starts the mock (core 0) and meshgate (core 1) itself, opens N
                  (default 1000) concurrent slow streams (`mock-model-delayMS`) and
                  reports the gateway's RSS while they are open, then keeps a mixed load
                  running (wrk non-streaming chat + rounds of N open streams) for
                  --seconds (default 60, at most 600) sampling RSS, and reports growth.

Examples:
  bench/overhead.py                                  # meshgate vs LiteLLM vs direct (~15 min)
  bench/overhead.py --no-litellm --conc 1,16,64,256  # meshgate vs direct only
  bench/overhead.py --no-litellm --quick             # chat+stream at c=64, 5 s runs
  bench/overhead.py soak --streams 1000 --seconds 600
  bench/overhead.py -- --gw-cpus 1 --load-cpus 0     # anything after -- goes to the harness

The shared bench folder is found next to the repository (`<repo>/../shared/bench`), or
with --shared DIR / $MESHGATE_BENCH_SHARED.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUOTA = 10**15  # tokens per day: never the limiting factor in a benchmark


def log(*parts: object) -> None:
    print("[overhead]", *parts, file=sys.stderr, flush=True)


def shared_bench(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("MESHGATE_BENCH_SHARED"), REPO.parent / "shared" / "bench"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "run_peer.sh").exists():
            return Path(candidate).resolve()
    raise SystemExit(f"shared bench folder not found (tried {REPO.parent / 'shared' / 'bench'}); use --shared DIR")


def meshgate_cmd() -> list[str]:
    return [sys.executable, "-m", "meshgate.cli.main"]


def catalog(mock_port: int, extra_models: tuple[str, ...] = ()) -> str:
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    out = []
    for model in dict.fromkeys(("mock-model", "mock-model-delay5", *extra_models)):
        out.append(
            f'[[models]]\nid = "{model}"\nkind = "chat"\ncontext_length = 131072\n'
            f"daily_quota = {{ api = {QUOTA}, chat = {QUOTA} }}\n"
            f'[[models.upstreams]]\nurl = "{upstream}"\n'
        )
    return "\n".join(out)


def prepare_home(home: Path, mock_port: int, extra_models: tuple[str, ...] = ()) -> str:
    """Catalog, database, account and API key in `home`; returns the key's secret."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(catalog(mock_port, extra_models))
    env = {**os.environ, "MESHGATE_HOME": str(home)}
    env.pop("MESHGATE_DATABASE_URL", None)

    def cli(*args: str) -> str:
        result = subprocess.run([*meshgate_cmd(), *args], env=env, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"meshgate {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    cli("accounts", "create", "bench")
    secret = cli("keys", "create", "--account", "bench", "--name", "overhead benchmark").strip().splitlines()[-1]
    (home / "bench-api-key").write_text(secret + "\n")
    return secret


def serve_command(home: Path, port: str = "$GW_PORT") -> str:
    """The gateway COMMAND for the harness (runs under bash -c, pinned by the harness)."""
    return (
        f"cd {shlex.quote(str(REPO))} && MESHGATE_HOME={shlex.quote(str(home))} exec "
        + shlex.join(meshgate_cmd())
        + f" serve --config {shlex.quote(str(home / 'catalog.toml'))} --port {port}"
    )


# ---------------------------------------------------------------- peer mode


def run_peer(a: argparse.Namespace, extra: list[str]) -> int:
    shared = shared_bench(a.shared)
    home = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    try:
        key = prepare_home(home, a.mock_port)
        log(f"MESHGATE_HOME={home}; key {key[:16]}…")
        args = [str(shared / "run_peer.sh")]
        if not a.no_litellm:
            args.append("--litellm")
        base = f"http://127.0.0.1:{a.port}"
        args += ["--gw", "meshgate", base, key, serve_command(home)]
        conc, phases, duration, warmup = a.conc, a.phases, a.duration, a.warmup
        if a.quick:
            conc, phases, duration, warmup = "64", "chat,stream", 5.0, 1.0
        args += ["--conc", conc, "--phases", phases, "--duration", f"{duration:g}", "--warmup", f"{warmup:g}"]
        args += ["--mock-port", str(a.mock_port)]
        if a.out:
            args += ["--out", a.out]
        args += ["--note", f"meshgate {git_rev()} (auth + quota reservation + SQLite settlement + usage history on)"]
        args += extra
        log("$ " + shlex.join(args))
        # The harness keeps its venvs and results under BENCH_STATE: ours, not the shared folder.
        state = REPO / "bench" / ".state"
        state.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(args, cwd=shared.parent, env={**os.environ, "BENCH_STATE": str(state)})
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()
    finally:
        if not a.keep_home:
            shutil.rmtree(home, ignore_errors=True)


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "meshgate"], capture_output=True, text=True
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


# ---------------------------------------------------------------- soak mode


def proc_usage(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK, int(rest[21]) * PAGE


def taskset(cpus: str) -> list[str]:
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus]
    return []


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_streams(
    shared: Path, base: str, key: str, streams: int, model: str, tokens: int, cpus: str, max_seconds: float
) -> dict[str, object]:
    cmd = [
        *taskset(cpus),
        sys.executable,
        str(shared / "load.py"),
        base,
        "--mode",
        "stream",
        "-n",
        str(streams),
        "-c",
        str(streams),
        "-m",
        model,
        "--max-tokens",
        str(tokens),
        "--warmup",
        "0",
        "--max-seconds",
        f"{max_seconds:g}",
        "--timeout",
        f"{max_seconds + 30:g}",
        "-k",
        key,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # type: ignore[return-value]


def loadjson(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=900)
    line = next((ln for ln in out.splitlines() if ln.startswith("LOADJSON ")), None)
    if line is None:
        return {"error": (err or out)[-400:]}
    return json.loads(line[9:])  # type: ignore[no-any-return]


def run_soak(a: argparse.Namespace) -> int:
    shared = shared_bench(a.shared)
    seconds = min(max(a.seconds, 0.0), 600.0)
    home = Path(tempfile.mkdtemp(prefix="meshgate-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock = subprocess.Popen(
            [*taskset(a.mock_cpus), sys.executable, str(shared / "mock_upstream.py"), "--port", str(a.mock_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(mock)
        wait_port(a.mock_port, mock)
        key = prepare_home(home, a.mock_port, (f"mock-model-delay{a.delay_ms}",))
        env = {**os.environ, "MESHGATE_HOME": str(home)}
        env.pop("MESHGATE_DATABASE_URL", None)
        gw_log = open(home / "serve.log", "ab")  # noqa: SIM115
        gw = subprocess.Popen(
            [
                *taskset(a.gw_cpus),
                *meshgate_cmd(),
                "serve",
                "--config",
                str(home / "catalog.toml"),
                "--port",
                str(a.port),
            ],
            env=env,
            cwd=REPO,
            stdout=gw_log,
            stderr=gw_log,
            start_new_session=True,
        )
        procs.append(gw)
        wait_port(a.port, gw)
        base = f"http://127.0.0.1:{a.port}"
        time.sleep(0.5)
        _, idle_rss = proc_usage(gw.pid)
        log(f"gateway pid {gw.pid} idle RSS {idle_rss / 2**20:.1f} MiB")

        # 1) N concurrent open streams: tokens * delay keeps each open for several seconds.
        model = f"mock-model-delay{a.delay_ms}"
        hold = a.tokens * a.delay_ms / 1000
        log(
            f"opening {a.streams} concurrent streams of {a.tokens} tokens at {a.delay_ms} ms/token (~{hold:.0f} s each)"
        )
        cpu0, _ = proc_usage(gw.pid)
        loader = load_streams(shared, base, key, a.streams, model, a.tokens, a.load_cpus, hold * 4 + 30)
        peak = 0
        while loader.poll() is None:
            peak = max(peak, proc_usage(gw.pid)[1])
            time.sleep(0.2)
        res = loadjson(loader)
        cpu1, after_rss = proc_usage(gw.pid)
        first = {
            "streams": a.streams,
            "model": model,
            "idle_rss_mib": idle_rss / 2**20,
            "peak_rss_mib": peak / 2**20,
            "rss_after_mib": after_rss / 2**20,
            "gw_cpu_s": cpu1 - cpu0,
            "errors": res.get("errors"),
            "completed": res.get("requests_ok", res.get("ok")),
            "chunks": f"{res.get('content_chunks_min')}-{res.get('content_chunks_max')}",
            "ttft_p50_ms": res.get("ttft_p50_ms"),
            "ttft_p99_ms": res.get("ttft_p99_ms"),
        }
        log("open streams:", json.dumps(first))

        # 2) bounded soak: wrk non-streaming chat + repeated rounds of open streams.
        samples: list[tuple[float, float]] = []
        soak: dict[str, object] = {"seconds": seconds}
        if seconds > 0:
            body = home / "body.json"
            body.write_text(
                json.dumps(
                    {"model": "mock-model", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
                )
            )
            wrk = None
            if shutil.which("wrk"):
                wrk = subprocess.Popen(
                    [
                        *taskset(a.load_cpus),
                        "wrk",
                        "-t1",
                        "-c64",
                        f"-d{seconds:g}s",
                        "-s",
                        str(shared / "wrk_post.lua"),
                        base + "/v1/chat/completions",
                    ],
                    env={**os.environ, "WRK_BODY_FILE": str(body), "WRK_KEY": key},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            start = time.monotonic()
            rounds = 0
            stream_errors = 0
            cpu0, _ = proc_usage(gw.pid)
            next_sample = start
            while time.monotonic() - start < seconds:
                rnd_tokens = max(1, min(a.tokens, int((seconds - (time.monotonic() - start)) * 1000 / a.delay_ms)))
                loader = load_streams(shared, base, key, a.streams, model, rnd_tokens, a.load_cpus, hold * 4 + 30)
                while loader.poll() is None:
                    if time.monotonic() >= next_sample:
                        samples.append((time.monotonic() - start, proc_usage(gw.pid)[1] / 2**20))
                        next_sample += a.sample_every
                    time.sleep(0.2)
                r = loadjson(loader)
                stream_errors += int(r.get("errors") or 0) if "error" not in r else a.streams
                rounds += 1
            wrk_res: dict[str, object] = {}
            if wrk is not None:
                out, _ = wrk.communicate(timeout=60)
                line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
                if line:
                    w = json.loads(line[8:])
                    errs = sum(int(w[k]) for k in w if k.startswith("err_"))
                    wrk_res = {
                        "chat_requests": w["requests"],
                        "chat_rps": round(w["requests"] / (w["duration_us"] / 1e6)),
                        "chat_errors": errs,
                    }
            cpu1, end_rss = proc_usage(gw.pid)
            samples.append((time.monotonic() - start, end_rss / 2**20))
            # Growth: the last samples against the first ones after the first round (warm caches).
            warm = [s for t, s in samples if t >= min(samples[-1][0] * 0.2, 30)] or [s for _, s in samples]
            k = max(1, len(warm) // 5)
            growth = sum(warm[-k:]) / k - sum(warm[:k]) / k
            soak.update(
                {
                    "stream_rounds": rounds,
                    "stream_errors": stream_errors,
                    **wrk_res,
                    "gw_cpu_s": round(cpu1 - cpu0, 1),
                    "rss_first_mib": round(warm[0], 1),
                    "rss_last_mib": round(warm[-1], 1),
                    "rss_max_mib": round(max(s for _, s in samples), 1),
                    "rss_growth_mib": round(growth, 1),
                    "samples": [(round(t), round(s, 1)) for t, s in samples],
                }
            )
            log("soak:", json.dumps({k: v for k, v in soak.items() if k != "samples"}))
        report = {"open_streams": first, "soak": soak}
        print(json.dumps(report, indent=1))
        print(
            f"\n| open streams | idle RSS MiB | peak RSS MiB | errors | soak s | RSS first→last MiB | growth MiB |\n"
            f"|---:|---:|---:|---:|---:|---|---:|\n"
            f"| {a.streams} | {first['idle_rss_mib']:.1f} | {first['peak_rss_mib']:.1f} | {first['errors']} | "
            f"{seconds:g} | {soak.get('rss_first_mib', '-')}→{soak.get('rss_last_mib', '-')} | "
            f"{soak.get('rss_growth_mib', '-')} |"
        )
        return 0
    finally:
        for p in reversed(procs):
            stop(p)
        if not a.keep_home:
            shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    mode = "peer"
    if argv and argv[0] in ("peer", "soak"):
        mode = argv.pop(0)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", help="the shared bench folder (default <repo>/../shared/bench)")
    p.add_argument("--port", type=int, default=18480, help="meshgate's port")
    p.add_argument("--mock-port", type=int, default=18400)
    p.add_argument("--keep-home", action="store_true", help="keep the temporary MESHGATE_HOME")
    if mode == "peer":
        p.add_argument("--no-litellm", action="store_true", help="measure meshgate and direct only")
        p.add_argument("--conc", default="1,16,64,256")
        p.add_argument(
            "--phases",
            default="chat,stream,ttft",
            help="harness phases (embed needs an embedding model named mock-model: not offered)",
        )
        p.add_argument("--duration", type=float, default=10.0)
        p.add_argument("--warmup", type=float, default=2.0)
        p.add_argument("--quick", action="store_true", help="chat+stream at c=64, 5 s runs")
        p.add_argument("--out", help="results folder (default: the harness's)")
        return run_peer(p.parse_args(argv), extra)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    p.add_argument("--delay-ms", type=int, default=50, help="mock delay per token")
    p.add_argument("--seconds", type=float, default=60.0, help="soak duration after the open-streams check (≤ 600)")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--gw-cpus", default="1")
    p.add_argument("--mock-cpus", default="0")
    p.add_argument("--load-cpus", default="0")
    return run_soak(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
