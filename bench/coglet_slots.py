"""How often Cog's server answers 409 "At capacity" below its slot count, with a predictor that only
sleeps: what is coglet's own, apart from this service.

A throwaway async predictor (``asyncio.to_thread`` of a 50 ms sleep) is written to a temporary
folder and served by coglet with ``COG_MAX_CONCURRENCY`` slots; then 1, 2, 3 and 4 closed-loop
callers each send --requests predictions, retrying a 409 after 50 ms. It prints, per number of
callers, the predictions answered and the 409s met.

    python bench/coglet_slots.py --slots 4 --requests 50
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PREDICTOR = '''
import asyncio, time
from cog import BasePredictor


def work(tag):
    time.sleep(0.05)
    return tag


class Predictor(BasePredictor):
    def setup(self):
        pass

    async def predict(self, tag: str = "a") -> str:
        return await asyncio.to_thread(work, tag)
'''


def closed_loop(url: str, callers: int, requests: int) -> tuple[int, int]:
    """``callers`` threads each sending ``requests`` predictions back to back; (answered, 409s)."""
    counts = {"answered": 0, "rejected": 0}
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(requests):
            while True:
                request = urllib.request.Request(f"{url}/predictions", data=b'{"input": {"tag": "x"}}',
                                                 headers={"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(request, timeout=30).read()
                    with lock:
                        counts["answered"] += 1
                    break
                except urllib.error.HTTPError as error:
                    if error.code != 409:
                        raise
                    with lock:
                        counts["rejected"] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["answered"], counts["rejected"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="predictions per caller")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "predict.py").write_text(PREDICTOR)
        env = dict(os.environ, COG_PREDICT_TYPE_STUB="predict.py:Predictor", PORT=str(port),
                   COG_MAX_CONCURRENCY=str(args.slots), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        server = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health-check", timeout=2) as response:
                        if json.loads(response.read())["status"] == "READY":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("coglet not READY in 60 s")
                time.sleep(0.2)
            for callers in range(1, args.slots + 1):
                answered, rejected = closed_loop(url, callers, args.requests)
                print(f"{callers} caller(s) on {args.slots} slots: {answered} answered, {rejected} x 409 "
                      f"in {answered + rejected} POSTs", flush=True)
        finally:
            server.kill()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
