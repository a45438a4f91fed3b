"""Load on `age serve`: requests/s and latency at several concurrencies, against `age predict` on the same photos.

  python benchmarks/serve_load.py [--photos DIR] [--model M] [--concurrency 1,4,16] [--requests 270]
                                  [--max-seconds 60] [--threads N]

1. `age predict`'s photos/s on the photos one at a time, the work of one request (agecli.bench.children's predict
   child with pipeline=False: a fresh process, the model loaded, two photos of warm-up, then every photo
   in turn). `age predict` on a folder batches faces across photos, which single requests cannot.
2. `age serve` started as a process on a free port of 127.0.0.1, then, for each concurrency C, C clients
   each send one photo (multipart, as `curl -F image=@photo`), wait for the answer, send the next. Each
   level sends at most --requests photos and starts none after --max-seconds, after C warm-up requests.
   Every request goes to loopback; nothing leaves the machine.
3. `age predict` again: the load of a shared machine drifts, so the comparison uses the mean of both.
4. A table of requests/s, p50 and p99 latency and errors per level, and the target at concurrency 4:
   at least 80% of `age predict`'s photos/s, and p99 under 1 s. Beside them, the CPU time the server
   and the client spent per request, to compare with predict's CPU time per photo: unlike wall-clock
   rates, these hardly depend on what else the machine is running.

Default photos: the 270 FairFace photos of the shared data folder (448 px, as in `age bench`), or
examples/astronaut.png repeated where that folder is absent. The client runs on the same machine as
the server and takes some of its CPU; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.bench import runner as bench  # noqa: E402
from agecli.data.image_files import iter_images  # noqa: E402
from agecli.modelio.builtin import BUILTIN_MODEL  # noqa: E402

TARGET_SHARE, TARGET_P99, TARGET_LEVEL = 0.8, 1.0, 4
HOST = "127.0.0.1"  # loopback only, whatever the arguments


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=ROOT / ".." / "shared" / "data" / "fairface")
    parser.add_argument("--model", type=Path, default=BUILTIN_MODEL)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=270, help="at most this many timed requests per level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="no new request after this, per level")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for predict and the server")
    return parser.parse_args()


def photo_paths(folder: Path) -> list[str]:
    if folder.is_dir():
        return [str(i.path) for i in iter_images([folder]) if i.problem is None]
    print(f"{folder} not found: using examples/astronaut.png")
    return [str(ROOT / "examples" / "astronaut.png")]


def predict_rate(model: Path, photos: list[str], threads: int | None) -> tuple[float, float]:
    """(photos per wall-clock second, CPU milliseconds per photo) of `age predict`."""
    row = bench.run_child("predict", threads, model=str(model), photos=photos, heap_kept=True, pipeline=False)[0]
    if "error" in row:
        sys.exit(f"age predict failed: {row['error']}")
    return row["items"] / row["wall"], row["cpu"] / row["items"] * 1e3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, threads: int | None, log) -> subprocess.Popen:
    env = {**os.environ, "AGECLI_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("AGECLI_SERVE_TOKEN", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "agecli", "serve", "--host", HOST, "--port", str(port),
                             "--model", str(model)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


async def wait_healthy(client, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"age serve exited with {process.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError(f"age serve did not answer within {timeout:.0f} s")


async def one_level(client, bodies: list[tuple[str, bytes]], clients: int, count: int, seconds: float,
                    pid: int) -> dict:
    """`clients` loops sending photos back to back; latencies of the timed requests, errors, wall time."""
    async def send(i: int) -> float | str:
        name, data = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            response = await client.post("/v1/predict", files={"image": (name, data)})
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return time.perf_counter() - t0 if response.status_code == 200 else f"{response.status_code} {response.text}"

    await asyncio.gather(*(send(i) for i in range(clients)))  # warm-up: connections, first-call allocations
    latencies, errors, next_index = [], [], 0
    start, server_cpu0, client_cpu0 = time.perf_counter(), cpu_seconds(pid), time.process_time()

    async def loop() -> None:
        nonlocal next_index
        while next_index < count and time.perf_counter() - start < seconds:
            index, next_index = next_index, next_index + 1
            outcome = await send(index)
            (latencies if isinstance(outcome, float) else errors).append(outcome)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return {"clients": clients, "latencies": sorted(latencies), "errors": errors, "wall": time.perf_counter() - start,
            "server_cpu": cpu_seconds(pid) - server_cpu0, "client_cpu": time.process_time() - client_cpu0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    return values[min(len(values), max(1, math.ceil(q / 100 * len(values)))) - 1]


async def load(port: int, bodies, levels: list[int], count: int, seconds: float, process) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60, limits=limits) as client:
        await wait_healthy(client, process)
        return [await one_level(client, bodies, c, count, seconds, process.pid) for c in levels]


def report(results: list[dict], predict: list[tuple[float, float]], photos: int) -> bool:
    predict_pps = sum(rate for rate, _ in predict) / len(predict)
    print(f"\n`age predict` on the same {photos} photos, before and after: "
          + ", ".join(f"{rate:.1f} photos/s ({cpu:.0f} CPU ms/photo)" for rate, cpu in predict)
          + f"; mean {predict_pps:.1f} photos/s\n")
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>7} {'vs predict':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'server CPU ms/req':>17} {'client CPU ms/req':>17}")
    met = True
    for r in results:
        done, lat = len(r["latencies"]), r["latencies"]
        rate = done / r["wall"]
        print(f"{r['clients']:>11} {done:>8} {rate:>7.1f} {rate / predict_pps:>9.0%} {percentile(lat, 50) * 1e3:>7.0f} "
              f"{percentile(lat, 99) * 1e3:>7.0f} {len(r['errors']):>6} {r['server_cpu'] / max(done, 1) * 1e3:>17.0f} "
              f"{r['client_cpu'] / max(done, 1) * 1e3:>17.1f}")
        for error in r["errors"][:3]:
            print(f"{'':>11} error: {error[:160]}")
        met &= not r["errors"]
        if r["clients"] == TARGET_LEVEL:
            ok = rate >= TARGET_SHARE * predict_pps and percentile(lat, 99) < TARGET_P99
            met &= ok
            print(f"{'':>11} target at {TARGET_LEVEL}: >= {TARGET_SHARE:.0%} of predict's photos/s and p99 < "
                  f"{TARGET_P99:g} s: {'met' if ok else 'NOT met'}")
    return met


def main() -> int:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    photos = photo_paths(args.photos)
    threads = args.threads or os.environ.get("OMP_NUM_THREADS") or "library default"
    print(f"{len(photos)} photos from {args.photos}; model {args.model.name}; threads {threads}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (a shared machine: figures vary)")
    predict = [predict_rate(args.model, photos, args.threads)]
    bodies = [(Path(p).name, Path(p).read_bytes()) for p in photos]
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = start_server(args.model, port, args.threads, log)
        try:
            results = asyncio.run(load(port, bodies, levels, args.requests, args.max_seconds, process))
        except RuntimeError as err:
            log.seek(0)
            sys.exit(f"{err}\n{log.read()[-2000:]}")
        finally:
            process.terminate()
            process.wait(timeout=30)
    predict.append(predict_rate(args.model, photos, args.threads))  # again: the machine's load drifts
    met = report(results, predict, len(photos))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
