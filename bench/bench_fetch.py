"""The real cold boot: weights from a URL, against the same weights on local disk, in one run.

A loopback object store (tests/fixtures/object_store.py, in its own process) serves a tar of the tiny
SDXL plus a filler file in ``unet/`` with a per-connection rate cap and a time to first byte.
The benchmark reports, each a median of ``--runs``:

- spawn -> READY of the real server (coglet) from local disk, and from the URL (fresh cache each
  run), the difference, and the first image after READY;
- the download alone at concurrency 1, 4, 16 and 32 (GB/s), next to ``hf_transfer`` (Hugging Face's
  Rust downloader: parallel Range GETs to a file) on the same server and file, and ours / its time;
- what the in-order consumer costs: the network alone (bytes discarded), with sha256, with the tar
  unpacked, and both;
- with ``--cold``: the local-disk start with the weights evicted from the page cache first.

pget (Replicate's Go downloader) is not on the package index and cannot be installed here.

    python bench/bench_fetch.py --filler-mb 600 --rate-mb 40 --ttfb-ms 100 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_coldstart import drop_page_cache, free_port, service_to_ready, write_import_cache  # noqa: E402


def build_tar(workdir: Path, filler_mb: int, weights: Path | None) -> tuple[Path, Path]:
    """The SDXL folder (``weights``, or the tiny SDXL with ``filler_mb`` of random bytes in ``unet/``)
    and its tar."""
    from tests.fixtures.make_weights import build_sdxl

    folder = weights or workdir / "sdxl"
    if weights is None:
        build_sdxl("tiny", folder)
        with (folder / "unet" / "filler.bin").open("wb") as out:
            for _ in range(filler_mb):
                out.write(os.urandom(1024 * 1024))
    store = workdir / "store"
    store.mkdir()
    with tarfile.open(store / "sdxl.tar", "w") as archive:
        archive.add(folder, arcname="sdxl")
    return folder, store / "sdxl.tar"


def start_store(root: Path, rate_mb: float, ttfb_ms: float, total_mb: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fixtures" / "object_store.py"), "--root", str(root),
                                "--port", str(port), "--rate-mb", str(rate_mb), "--ttfb-ms", str(ttfb_ms),
                                "--total-mb", str(total_mb)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/nothing", timeout=1)
        except urllib.error.HTTPError:
            return process, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("object store did not start")


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(runs: int, action: Callable[[], Any]) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return median(seconds)


def transfer_rows(url: str, size: int, workdir: Path, runs: int, concurrencies: list[int], chunk_mb: float,
                  anchor: bool = True) -> list[dict]:
    import hf_transfer

    from netfetch import FetchPolicy, cache
    from netfetch.policy import MB

    rows = []
    for concurrency in concurrencies:
        policy = FetchPolicy("bench", trusted=True, deadline_s=3600, concurrency=concurrency, chunk_bytes=int(chunk_mb * MB))

        def ours() -> None:
            folder = workdir / "fetch-cache"
            shutil.rmtree(folder, ignore_errors=True)
            cache.fetch(url, folder, policy)

        def theirs() -> None:
            target = workdir / "hf-transfer.tar"
            target.unlink(missing_ok=True)
            hf_transfer.download(url, str(target), max_files=concurrency, chunk_size=int(chunk_mb * MB),
                                 parallel_failures=max(1, concurrency // 2), max_retries=3)

        mine = timed(runs, ours)
        row = {"concurrency": concurrency, "ours_s": mine, "ours_gb_s": size / 1e9 / mine}
        line = f"  concurrency {concurrency:>2}: ours {mine:.2f} s ({size / 1e9 / mine:.3f} GB/s, unpacked into the cache)"
        if anchor:
            theirs_s = timed(runs, theirs)
            row.update(hf_transfer_s=theirs_s, hf_transfer_gb_s=size / 1e9 / theirs_s, ours_over_hf_transfer=mine / theirs_s)
            line += f", hf_transfer {theirs_s:.2f} s (to one file); ours / hf_transfer {mine / theirs_s:.2f}"
            (workdir / "hf-transfer.tar").unlink(missing_ok=True)
        shutil.rmtree(workdir / "fetch-cache", ignore_errors=True)
        rows.append(row)
        print(line, flush=True)
    return rows


def consumer_rows(url: str, size: int, workdir: Path, runs: int, concurrency: int, chunk_mb: float) -> dict[str, float]:
    """The same download into consumers that do more and more of the work."""
    import hashlib

    from netfetch import FetchPolicy
    from netfetch.policy import MB
    from netfetch.ranged import download
    from netfetch.unpack import TarStream

    policy = FetchPolicy("bench", trusted=True, deadline_s=3600, concurrency=concurrency, chunk_bytes=int(chunk_mb * MB))

    class Discard:
        def __init__(self, hashing: bool = False, unpack: bool = False) -> None:
            self.digest = hashlib.sha256() if hashing else None
            root = workdir / "consumer"
            shutil.rmtree(root, ignore_errors=True)
            self.tar = TarStream(root, "bench") if unpack else None

        def feed(self, data: memoryview) -> None:
            if self.digest is not None:
                self.digest.update(data)
            if self.tar is not None:
                self.tar.feed(data)

        def finish(self) -> None:
            if self.tar is not None:
                self.tar.finish()

    cases = {"network only": {}, "+ sha256": {"hashing": True}, "+ untar": {"unpack": True},
             "+ sha256 + untar": {"hashing": True, "unpack": True}}
    out = {}
    for name, options in cases.items():
        out[name] = timed(runs, lambda options=options: download(url, policy, Discard(**options)))
        print(f"  {name:<18} {out[name]:.2f} s ({size / 1e9 / out[name]:.3f} GB/s)", flush=True)
    return out


def untar_rows(archive: Path, workdir: Path, runs: int) -> dict[str, float]:
    """Unpacking the same tar from memory, no network: our stream walker against ``tarfile``'s stream
    mode (``r|``), both into a fresh folder with the ``data`` filter."""
    from netfetch.unpack import TarStream

    data = archive.read_bytes()
    step = 16 * 1024 * 1024

    def ours() -> None:
        root = workdir / "untar-ours"
        shutil.rmtree(root, ignore_errors=True)
        tar = TarStream(root, "bench")
        view = memoryview(data)
        for start in range(0, len(data), step):
            tar.feed(view[start:start + step])
        tar.finish()

    def stdlib() -> None:
        import io

        root = workdir / "untar-tarfile"
        shutil.rmtree(root, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as stream:
            stream.extractall(root, filter="data")

    out = {"netfetch TarStream": timed(runs, ours), "tarfile r| extractall": timed(runs, stdlib)}
    for name, seconds in out.items():
        print(f"  {name:<22} {seconds:.2f} s ({len(data) / 1e9 / seconds:.2f} GB/s)", flush=True)
    return out


def ready_rows(folder: Path, url: str, workdir: Path, runs: int, cold: bool, first_image: tuple[int, int, int],
               concurrency: int, chunk_mb: float) -> dict[str, Any]:
    from pipeline.loading.component_build import weight_files

    local, remote, cold_local, first_local, first_remote = [], [], [], [], []
    env = {"WEIGHTS_FETCH_CONCURRENCY": str(concurrency), "WEIGHTS_FETCH_CHUNK_MB": str(chunk_mb),
           "SAFETY_CHECKER_WEIGHTS": str(workdir / "no-safety-checker")}
    for run in range(runs):
        result = service_to_ready(folder, workdir, "sdxl", env, first_image=first_image)
        local.append(result["ready_s"])
        first_local.append(result["first_image_s"])
        cache_dir = workdir / f"weights-cache-{run}"
        result = service_to_ready(url, workdir, "sdxl", dict(env, WEIGHTS_CACHE=str(cache_dir)), first_image=first_image)
        remote.append(result["ready_s"])
        first_remote.append(result["first_image_s"])
        shutil.rmtree(cache_dir, ignore_errors=True)
        if cold:
            drop_page_cache(weight_files(folder) + [p for p in [folder / "unet" / "filler.bin"] if p.exists()])
            cold_local.append(service_to_ready(folder, workdir, "sdxl", env)["ready_s"])
    row = {"local_ready_s": median(local), "url_ready_s": median(remote),
           "url_minus_local_s": median([r - lo for r, lo in zip(remote, local, strict=True)]),
           "first_image_local_s": median(first_local), "first_image_url_s": median(first_remote),
           "local_runs": local, "url_runs": remote}
    if cold:
        row["local_cold_ready_s"] = median(cold_local)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filler-mb", type=int, default=600)
    parser.add_argument("--rate-mb", type=float, default=90.0, help="MB/s per connection")
    parser.add_argument("--ttfb-ms", type=float, default=150.0)
    parser.add_argument("--total-mb", type=float, default=0.0, help="cap on the server's total MB/s (0: none)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--service-concurrency", type=int, default=None, help="default: the setting's default")
    parser.add_argument("--chunk-mb", type=float, default=16.0)
    parser.add_argument("--cold", action="store_true", help="also start from local disk with the page cache dropped")
    parser.add_argument("--skip-ready", action="store_true", help="only the transfer and consumer rows")
    parser.add_argument("--skip-transfer", action="store_true", help="only spawn -> READY (the device step)")
    parser.add_argument("--no-anchor", action="store_true", help="leave out hf_transfer (a size the disk holds only once more)")
    parser.add_argument("--no-untar", action="store_true", help="leave out the in-memory unpack rows (they hold the tar in memory)")
    parser.add_argument("--weights", type=Path, help="an SDXL folder to serve instead of the tiny one with filler")
    parser.add_argument("--json", type=Path, default=ROOT / "bench_results" / "fetch.json")
    args = parser.parse_args()

    import settings

    service_concurrency = args.service_concurrency or settings.SETTINGS["WEIGHTS_FETCH_CONCURRENCY"].default
    workdir = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        write_import_cache(workdir / "imports")
        folder, archive = build_tar(workdir, args.filler_mb, args.weights)
        size = archive.stat().st_size
        store, base = start_store(archive.parent, args.rate_mb, args.ttfb_ms, args.total_mb)
        url = f"{base}/sdxl.tar"
        print(f"tar of {size / 1e6:.0f} MB at {args.rate_mb:g} MB/s per connection, {args.ttfb_ms:g} ms to first byte"
              f"{f', {args.total_mb:g} MB/s in all' if args.total_mb else ''}", flush=True)
        try:
            result: dict[str, Any] = {"tar_bytes": size, "rate_mb_s": args.rate_mb, "ttfb_ms": args.ttfb_ms,
                                      "total_mb_s": args.total_mb, "chunk_mb": args.chunk_mb,
                                      "service_concurrency": service_concurrency, "runs": args.runs,
                                      "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
            if not args.skip_transfer:
                print("download alone (median of runs):", flush=True)
                if args.skip_ready and args.weights is None:
                    shutil.rmtree(folder)  # only the tar is needed from here: room on the disk for one more copy
                result["transfer"] = transfer_rows(url, size, workdir, args.runs,
                                                   [int(c) for c in args.concurrency.split(",")], args.chunk_mb,
                                                   anchor=not args.no_anchor)
                print(f"what the consumer costs, concurrency {service_concurrency}:", flush=True)
                result["consumer"] = consumer_rows(url, size, workdir, args.runs, service_concurrency, args.chunk_mb)
                if not args.no_untar:
                    print("unpacking the tar from memory, no network:", flush=True)
                    result["untar"] = untar_rows(archive, workdir, args.runs)
            if not args.skip_ready:
                print("spawn -> READY of the real server:", flush=True)
                result["ready"] = ready_rows(folder, url, workdir, args.runs, args.cold, (64, 64, 2),
                                             service_concurrency, args.chunk_mb)
                ready = result["ready"]
                print(f"  local disk {ready['local_ready_s']:.2f} s, URL {ready['url_ready_s']:.2f} s: the URL costs "
                      f"{ready['url_minus_local_s']:.2f} s more; first image after READY {ready['first_image_local_s']:.2f} s "
                      f"/ {ready['first_image_url_s']:.2f} s"
                      + (f"; local disk with the page cache dropped {ready['local_cold_ready_s']:.2f} s" if args.cold else ""),
                      flush=True)
        finally:
            store.kill()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
