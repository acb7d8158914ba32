"""Where a server's CPU goes in a burst of mutual-TLS handshakes (the failover burst, without the
protocol): N clients connect at once to one asyncio server process, each does the handshake
(TLS 1.3, EC P-256 keys from one CA, a client certificate, the server's verified against the
dialled address), sends one line and reads one line back, and holds the connection.

The server's CPU (utime + stime of its /proc/PID/stat) is sampled before the burst and once
every client has its answer; so is the clients' process. Each variant is a fresh server child:

- `msrv`: msrv's way (common.tls.server_context, plaintext accept then `start_tls` with the
  timeout msrv bounds it with, the peer certificate read as msrv reads it)
- `listener`: the same context given to `asyncio.start_server(ssl=...)` instead
- `plain`: no TLS at all (what the protocol costs without it)
- any variant with `+no_tickets`: the server sends no TLS 1.3 session ticket (num_tickets = 0)
- `+tickets`: the server sends OpenSSL's default two (num_tickets = 2)
- `+x25519`: X25519 for the key exchange, on both sides, instead of common.tls's curve
- `+uvloop`: the uvloop event loop, when it is installed (it is not a dependency)

    .venv/bin/python bench/handshake.py [--handshakes 1000] [--variants msrv,msrv+no_tickets]
        [--repeats 3] [--cprofile DIR] [--perf DIR]

`--cprofile DIR` writes a cProfile of each server (DIR/<variant>.prof, the burst only) and prints
its top functions; `--perf DIR` records `perf record -g` of each server during the burst and
prints the share of each library (libcrypto, libssl, python, the kernel). Prints a table, then
one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import ProcSample, print_json, print_table, proc_sample
from benchtls import Identities

from common.tls import PeerCertificate, client_context_from_pem, server_context
from msctl.children import LoggedProcess
from msctl.embedded_redis import free_port

ME = str(Path(__file__).resolve())
DEADLINE = 600.0
LINE = b'{"type":"ready"}\n'
DEFAULT_VARIANTS = "plain,msrv,msrv+no_tickets,listener,listener+no_tickets"


# ---------------------------------------------------------------- the server child


async def serve(variant: str, listen: str, pems: Path, profile: Path | None) -> None:
    parts = set(variant.split("+"))
    context: ssl.SSLContext | None = None
    if "plain" not in parts:
        context = server_context(
            (pems / "server.crt").read_bytes(),
            (pems / "server.key").read_bytes(),
            (pems / "ca.crt").read_bytes(),
        )
        if "no_tickets" in parts:
            context.num_tickets = 0
        if "tickets" in parts:
            context.num_tickets = 2
        if "x25519" in parts:
            context.set_ecdh_curve("X25519")
    in_listener = "listener" in parts
    profiler = cProfile.Profile() if profile is not None else None
    held: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if profiler is not None and not held:
            profiler.enable()
        held.add(writer)
        try:
            if context is not None and not in_listener:
                async with asyncio.timeout(10):
                    await writer.start_tls(context)
            if context is not None:
                PeerCertificate.of(writer.get_extra_info("ssl_object"))
            await reader.readline()
            writer.write(LINE)
            await writer.drain()
            await reader.read()
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()
            held.discard(writer)

    def dump(*_: object) -> None:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        print("profile written", file=sys.stderr, flush=True)

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(
        on_connect, host, int(port), backlog=4096, ssl=context if in_listener else None
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    print(f"handshake server listening on {listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- the clients child


async def clients(count: int, listen: str, pems: Path, tls: bool, curve: str | None) -> None:
    """Connect `count` clients at once (each with its own certificate); report when all have
    their answer, with the time the first connect started; then hold until stdin closes."""
    contexts: list[ssl.SSLContext | None] = [None] * count
    if tls:
        ca = (pems / "ca.crt").read_bytes()
        ids = json.loads((pems / "clients.json").read_text())
        contexts = [
            client_context_from_pem(
                ca, ids[i % len(ids)][0].encode(), ids[i % len(ids)][1].encode()
            )
            for i in range(count)
        ]
        for context in contexts:
            if context is not None and curve is not None:
                context.set_ecdh_curve(curve)
    host, port = listen.rsplit(":", 1)
    print("handshake clients ready", file=sys.stderr, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # go
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def one(context: ssl.SSLContext | None) -> None:
        nonlocal failed
        try:
            async with asyncio.timeout(60):
                reader, writer = await asyncio.open_connection(
                    host, int(port), ssl=context, server_hostname=host if context else None
                )
                writer.write(b'{"type":"startup"}\n')
                if await reader.readline() != LINE:
                    failed += 1
            writers.append(writer)
        except (OSError, ssl.SSLError, TimeoutError):
            failed += 1

    started = time.time()
    await asyncio.gather(*(one(c) for c in contexts))
    done = time.time()
    print(
        "handshake result " + json.dumps({"started": started, "done": done, "failed": failed}),
        file=sys.stderr,
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # stop
    for writer in writers:
        writer.close()


# ---------------------------------------------------------------- the parent


def write_pems(directory: Path, identities: int) -> None:
    ids = Identities.fresh("probe")
    server_crt, server_key = ids.server("127.0.0.1")
    (directory / "ca.crt").write_bytes(ids.ca.certificate_pem)
    (directory / "server.crt").write_bytes(server_crt)
    (directory / "server.key").write_bytes(server_key)
    clients_pem = [ids.client_pem(f"probe-{i:05d}") for i in range(identities)]
    (directory / "clients.json").write_text(
        json.dumps([[c.decode(), k.decode()] for c, k in clients_pem])
    )


def perf_summary(data: Path) -> dict[str, float]:
    """Share of samples per shared object (libcrypto, libssl, python, kernel, ...)."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso",
         "--percent-limit", "0.5"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    shares: dict[str, float] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].endswith("%"):
            shares[fields[1]] = float(fields[0].rstrip("%"))
    return shares


def perf_symbols(data: Path, limit: int = 25) -> str:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
         "--percent-limit", "0.7"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(lines[:limit])


class Perf:
    """`perf record -g` of one process, from `start` to `stop` (none when perf is missing)."""

    def __init__(self, directory: Path | None, variant: str) -> None:
        self.data = directory / f"{variant}.data" if directory and shutil.which("perf") else None
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, pid: int) -> None:
        if self.data is None:
            return
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            "perf", "record", "-F", "4999", "-g", "-o", str(self.data), "-p", str(pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            await asyncio.wait_for(self.process.wait(), 30)


async def start_children(
    variant: str, count: int, pems: Path, profile: Path | None
) -> tuple[LoggedProcess, asyncio.subprocess.Process]:
    """The server child (listening) and the clients child (ready, waiting for "go")."""
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    cmd = [ME, "--serve", variant, "--listen", listen, "--pems", str(pems)]
    if profile is not None:
        cmd += ["--profile-to", str(profile)]
    if "uvloop" in variant:
        cmd += ["--uvloop"]
    server = LoggedProcess(f"server-{variant}", cmd)
    await server.start(ready="handshake server listening")
    client_cmd = [ME, "--clients", str(count), "--listen", listen, "--pems", str(pems)]
    if "plain" in variant.split("+"):
        client_cmd.append("--plain")
    if "x25519" in variant.split("+"):
        client_cmd += ["--curve", "X25519"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSRV_")}
    client = await asyncio.create_subprocess_exec(
        sys.executable, *client_cmd, stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert client.stderr is not None
    while b"handshake clients ready" not in await client.stderr.readline():
        if client.returncode is not None:
            raise RuntimeError("the clients exited")
    return server, client


async def burst(
    server: LoggedProcess, client: asyncio.subprocess.Process, perf: Perf, profiled: bool
) -> tuple[dict[str, Any], list[ProcSample]]:
    """Go; the clients' result, and samples of server and clients before and after."""
    assert server.process is not None and client.stdin is not None and client.stderr is not None
    await perf.start(server.process.pid)
    before = [proc_sample(server.process.pid), proc_sample(client.pid)]
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    line = b""
    while not line.startswith(b"handshake result "):
        line = await asyncio.wait_for(client.stderr.readline(), 120)
        if not line:
            raise RuntimeError("the clients exited")
    await asyncio.sleep(0.2)  # the server's last writes
    after = [proc_sample(server.process.pid), proc_sample(client.pid)]
    await perf.stop()
    if profiled:
        os.kill(server.process.pid, signal.SIGUSR1)
        await server.wait_for("profile written", 10)
    client.stdin.write(b"stop\n")
    await client.stdin.drain()
    return json.loads(line.split(b" ", 2)[2]), [*before, *after]


async def one_run(
    variant: str, count: int, pems: Path, args: argparse.Namespace, repeat: int
) -> dict[str, object]:
    profile = None
    if args.cprofile is not None and repeat == 1:
        args.cprofile.mkdir(parents=True, exist_ok=True)
        profile = args.cprofile / f"{variant}.prof"
    perf = Perf(args.perf if repeat == 1 else None, variant)
    server, client = await start_children(variant, count, pems, profile)
    try:
        result, (s0, c0, s1, c1) = await burst(server, client, perf, profile is not None)
    finally:
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            await perf.stop()
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        await client.wait()
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            await server.stop(signal.SIGKILL)
    server_cpu = (s1.cpu_ticks - s0.cpu_ticks) / benchlib.CLK_TCK
    client_cpu = (c1.cpu_ticks - c0.cpu_ticks) / benchlib.CLK_TCK
    row: dict[str, object] = {
        "variant": variant,
        "repeat": repeat,
        "handshakes": count,
        "failed": result["failed"],
        "wall_s": round(result["done"] - result["started"], 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_ms_per_handshake": round(1000 * server_cpu / count, 3),
        "clients_cpu_s": round(client_cpu, 3),
        "clients_ms_per_handshake": round(1000 * client_cpu / count, 3),
        "server_rss_mb": round(s1.rss_bytes / 2**20, 1),
        "server_rss_kb_per_conn": round((s1.rss_bytes - s0.rss_bytes) / 1024 / count, 1),
        "clients_rss_kb_per_conn": round((c1.rss_bytes - c0.rss_bytes) / 1024 / count, 1),
    }
    if perf.data is not None:
        row["perf_dso_pct"] = perf_summary(perf.data)
        print(f"--- perf of the server, {variant}:\n{perf_symbols(perf.data)}", file=sys.stderr)
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(str(profile), stream=text).sort_stats("tottime").print_stats(25)
        print(f"--- cProfile of the server, {variant}:\n{text.getvalue()}", file=sys.stderr)
    return row


async def run(args: argparse.Namespace) -> dict[str, object]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-handshake-") as tmp:
        pems = Path(tmp)
        write_pems(pems, args.identities)
        for repeat in range(1, args.repeats + 1):
            for variant in args.variants.split(","):
                rows.append(await one_run(variant, args.handshakes, pems, args, repeat))
                print(rows[-1], file=sys.stderr, flush=True)
    best: dict[str, dict[str, object]] = {}
    for row in rows:  # the least CPU of the repeats: the others had a neighbour on the core
        v = str(row["variant"])
        if v not in best or float(row["server_cpu_s"]) < float(best[v]["server_cpu_s"]):  # type: ignore[arg-type]
            best[v] = row
    return {
        "bench": "handshake",
        "handshakes": args.handshakes,
        "openssl": ssl.OPENSSL_VERSION,
        "runs": rows,
        "best": {v: r["server_ms_per_handshake"] for v, r in best.items()},
        "revision": benchlib.revision(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=200, help="client certificates")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cprofile", type=Path, default=None)
    parser.add_argument("--perf", type=Path, default=None)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--listen", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pems", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--curve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.raise_nofile(2 * args.handshakes + 1024)
    if args.serve is not None:
        if args.uvloop:
            import uvloop  # type: ignore[import-not-found]

            uvloop.install()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.listen, args.pems, args.profile_to))
        return
    if args.clients is not None:
        asyncio.run(clients(args.clients, args.listen, args.pems, not args.plain, args.curve))
        return
    with benchlib.leftovers_killed():
        result = asyncio.run(asyncio.wait_for(run(args), DEADLINE))
    cols = ["variant", "repeat", "failed", "wall_s", "server_cpu_s", "server_ms_per_handshake",
            "clients_ms_per_handshake", "server_rss_kb_per_conn"]  # fmt: skip
    print_table([[r[c] for c in cols] for r in result["runs"]], cols)  # type: ignore[attr-defined]
    print(f"least server CPU per handshake (ms): {result['best']}")
    print_json(result)


if __name__ == "__main__":
    main()
