"""The one fetcher (netfetch): parallel ranges, resume, deadlines, caps, the fence, and never
trusting half a file. Every test runs against the loopback object store (tests/fixtures/object_store.py)."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import socket
import struct
import tarfile
import time
from pathlib import Path

import pytest

from netfetch import FetchPolicy, Incomplete, TooLarge, TooSlow, UnsafeURL, cache
from netfetch.errors import BadURL, FetchError
from netfetch.fence import is_reachable_for_callers
from netfetch.ranged import download
from netfetch.unpack import MemorySink
from tests.fixtures.object_store import Faults, serve


def safetensors_bytes(count: int = 3000) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [count], "data_offsets": [0, 4 * count]}}).encode()
    return struct.pack("<Q", len(header)) + header + os.urandom(4 * count)


def tar_of(files: dict[str, bytes], gzipped: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzipped else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    return folder


@pytest.fixture
def store(store_dir: Path):
    server = serve(store_dir, Faults(rate=0, ttfb=0))
    yield server
    server.stop()


def policy(**changes: object) -> FetchPolicy:
    return FetchPolicy("TEST_WEIGHTS", trusted=True, **{"deadline_s": 30, **changes})  # type: ignore[arg-type]


def fetch_memory(url: str, **changes: object) -> bytes:
    sink = MemorySink("TEST_WEIGHTS", 1 << 30)
    download(url, policy(**changes), sink)
    return bytes(sink.data)


def test_parallel_ranges_deliver_the_exact_bytes_on_several_connections(store, store_dir) -> None:
    data = os.urandom(3_000_001)
    (store_dir / "blob").write_bytes(data)
    assert fetch_memory(f"{store.url}/blob", concurrency=4, chunk_bytes=256 * 1024) == data
    ranges = sorted(r for _, r in store.requests)
    assert len(ranges) == 12 and "bytes=2883584-3000000" in ranges  # 12 chunks, the last one short


def test_each_chunk_resumes_from_its_last_byte(store, store_dir) -> None:
    data = os.urandom(1_000_000)
    (store_dir / "blob").write_bytes(data)
    store.faults.reset_after, store.faults.resets = 10_000, 3  # the first three bodies break off
    assert fetch_memory(f"{store.url}/blob", concurrency=4, chunk_bytes=200_000) == data
    starts = [int(r.split("=")[1].split("-")[0]) for _, r in store.requests]
    resumed = [start for start in starts if start % 200_000]
    assert len(resumed) == 3 and all(start % 200_000 == 10_000 for start in resumed)  # from the byte reached


def test_a_server_that_ignores_range_gets_one_stream_resumed_by_skipping(store, store_dir) -> None:
    data = os.urandom(500_000)
    (store_dir / "blob").write_bytes(data)
    store.faults.ignore_range = True
    store.faults.reset_after, store.faults.resets = 100_000, 1
    assert fetch_memory(f"{store.url}/blob", concurrency=8, chunk_bytes=64 * 1024) == data
    assert store.count() == 2  # the probe (cut at 100 kB) and one full re-read, skipped to where it broke


def test_429_waits_as_retry_after_says(store, store_dir) -> None:
    (store_dir / "blob").write_bytes(b"x" * 1000)
    store.faults.errors, store.faults.error_status, store.faults.retry_after = 1, 429, "1"
    started = time.monotonic()
    assert fetch_memory(f"{store.url}/blob") == b"x" * 1000
    assert time.monotonic() - started >= 1.0 and store.count() == 2


def test_5xx_is_retried_and_404_is_not(store, store_dir) -> None:
    (store_dir / "blob").write_bytes(b"y" * 1000)
    store.faults.errors = 2  # 503 twice, then the file
    assert fetch_memory(f"{store.url}/blob") == b"y" * 1000
    with pytest.raises(FetchError, match="TEST_WEIGHTS: HTTP 404"):
        fetch_memory(f"{store.url}/missing")
    assert store.count() == 4


def test_a_slow_drip_is_abandoned_at_the_deadline(store, store_dir) -> None:
    (store_dir / "blob").write_bytes(b"z" * 10_000)
    store.faults.drip = 0.01  # 100 bytes/s: 100 s for the file
    started = time.monotonic()
    with pytest.raises(TooSlow, match=r"TEST_WEIGHTS: .*/blob not complete within its 1.5 s deadline"):
        fetch_memory(f"{store.url}/blob", deadline_s=1.5, concurrency=2, chunk_bytes=4096)
    assert time.monotonic() - started < 3.0


def test_a_body_announced_too_large_is_refused_before_it_is_read(store, store_dir) -> None:
    (store_dir / "big").write_bytes(b"0" * 2_000_000)
    with pytest.raises(TooLarge, match="2000000 bytes; at most 1000 allowed"):
        fetch_memory(f"{store.url}/big", max_bytes=1000)
    store.faults.no_length, store.faults.ignore_range = True, True  # no length: the count while reading decides
    with pytest.raises(TooLarge, match="more than 1000 bytes"):
        fetch_memory(f"{store.url}/big", max_bytes=1000)


# -- never half a file ---------------------------------------------------------------------------

def test_a_truncated_tar_is_never_cached_and_the_next_start_fetches_it_whole(store, store_dir, tmp_path) -> None:
    payload = tar_of({"sdxl/unet/diffusion_pytorch_model.safetensors": safetensors_bytes(), "sdxl/model_index.json": b"{}"})
    (store_dir / "w.tar").write_bytes(payload)
    store.faults.no_length, store.faults.ignore_range = True, True
    store.faults.truncate_at = len(payload) // 2  # the server closes half-way, with no length to tell
    with pytest.raises(Incomplete, match="truncated"):
        cache.fetch(f"{store.url}/w.tar", tmp_path / "cache", policy())
    assert cache.lookup(tmp_path / "cache", f"{store.url}/w.tar") is None
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]  # nothing staged is left
    store.faults.truncate_at = None  # the server is healthy again
    entry = cache.fetch(f"{store.url}/w.tar", tmp_path / "cache", policy())
    assert not entry.cached and (entry.path / "model_index.json").read_bytes() == b"{}"
    assert cache.fetch(f"{store.url}/w.tar", tmp_path / "cache", policy()).cached


def test_a_truncated_safetensors_file_is_never_cached(store, store_dir, tmp_path) -> None:
    data = safetensors_bytes()
    (store_dir / "w.safetensors").write_bytes(data)
    store.faults.no_length, store.faults.ignore_range, store.faults.truncate_at = True, True, len(data) - 100
    with pytest.raises(Incomplete, match=f"has {len(data) - 100} bytes but its header accounts for {len(data)}"):
        cache.fetch(f"{store.url}/w.safetensors", tmp_path / "cache", policy())
    assert cache.lookup(tmp_path / "cache", f"{store.url}/w.safetensors") is None


def test_a_cache_entry_cut_short_later_is_fetched_again(store, store_dir, tmp_path) -> None:
    (store_dir / "w.tar").write_bytes(tar_of({"m/a.bin": b"a" * 5000}))
    url = f"{store.url}/w.tar"
    entry = cache.fetch(url, tmp_path / "cache", policy())
    (entry.path / "a.bin").write_bytes(b"a" * 10)  # a full disk, a hand edit
    again = cache.fetch(url, tmp_path / "cache", policy())
    assert not again.cached and (again.path / "a.bin").read_bytes() == b"a" * 5000


def test_leftovers_of_a_dead_download_are_removed(store, store_dir, tmp_path) -> None:
    (store_dir / "w.tar").write_bytes(tar_of({"m/a.bin": b"a" * 5000}))
    url = f"{store.url}/w.tar"
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = folder / f".staging-{cache.entry_key(url)}-999999999"
    (stale / "root").mkdir(parents=True)
    (stale / "root" / "half").write_bytes(b"h" * 100)
    cache.fetch(url, folder, policy())
    assert not stale.exists()


def test_eviction_counts_leftovers_and_keeps_the_newest(store, store_dir, tmp_path) -> None:
    folder = tmp_path / "cache"
    for name in ("a", "b"):
        (store_dir / name).write_bytes(name.encode() * 4000)
        cache.fetch(f"{store.url}/{name}", folder, policy())
        time.sleep(0.01)
    dead = folder / ".staging-v2-dead-999999999"
    dead.write_bytes(b"d" * 4000)
    newest = cache.lookup(folder, f"{store.url}/b")
    assert cache.usage(folder) >= 12_000
    evicted = cache.evict_beyond(folder, 5000, keep=newest.path)
    assert dead in evicted and not dead.exists()
    assert cache.lookup(folder, f"{store.url}/a") is None and cache.lookup(folder, f"{store.url}/b") is not None


def test_gzip_and_tar_bombs_are_refused_by_name(store, store_dir, tmp_path) -> None:
    bomb = tar_of({"m/zeros.bin": bytes(50_000_000)}, gzipped=True)
    assert len(bomb) < 100_000
    (store_dir / "bomb.tar.gz").write_bytes(bomb)
    with pytest.raises(TooLarge, match="TEST_WEIGHTS: .*more than 10000000 bytes"):
        cache.fetch(f"{store.url}/bomb.tar.gz", tmp_path / "cache", policy(max_unpacked=10_000_000))
    (store_dir / "bomb.tar").write_bytes(tar_of({"m/zeros.bin": bytes(20_000_000)}))
    with pytest.raises(TooLarge, match="unpacks to more than 10000000 bytes"):
        cache.fetch(f"{store.url}/bomb.tar", tmp_path / "cache", policy(max_unpacked=10_000_000))


def test_a_gzipped_tar_unpacks_once_and_a_hit_never_unpacks_again(store, store_dir, tmp_path, monkeypatch) -> None:
    (store_dir / "w.tar.gz").write_bytes(tar_of({"m/a.bin": b"q" * 100_000}, gzipped=True))
    url = f"{store.url}/w.tar.gz"
    entry = cache.fetch(url, tmp_path / "cache", policy())
    assert (entry.path / "a.bin").read_bytes() == b"q" * 100_000
    monkeypatch.setattr("netfetch.unpack.Gunzip.feed", lambda *a: pytest.fail("unpacked again"))
    assert cache.fetch(url, tmp_path / "cache", policy()).cached


def test_tar_members_escaping_the_folder_are_refused(store, store_dir, tmp_path) -> None:
    (store_dir / "evil.tar").write_bytes(tar_of({"../outside.txt": b"x"}))
    with pytest.raises(FetchError, match="tar member refused"):
        cache.fetch(f"{store.url}/evil.tar", tmp_path / "cache", policy())
    assert not (tmp_path / "outside.txt").exists()


def test_long_names_and_pax_headers_unpack(store, store_dir, tmp_path) -> None:
    name = "m/" + "d" * 120 + "/ünïcode-" + "f" * 110 + ".bin"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
        (store_dir / f"long-{fmt}.tar").write_bytes(buffer.getvalue())
        entry = cache.fetch(f"{store.url}/long-{fmt}.tar", tmp_path / "cache", policy())
        assert (entry.path / name.removeprefix("m/")).read_bytes() == b"abc"


def test_checksum_mismatch_leaves_nothing(store, store_dir, tmp_path) -> None:
    (store_dir / "w.tar").write_bytes(tar_of({"m/a.bin": b"a" * 100}))
    with pytest.raises(Incomplete, match="failed its checksum"):
        cache.fetch(f"{store.url}/w.tar#sha256={'0' * 64}", tmp_path / "cache", policy())
    good = hashlib.sha256((store_dir / "w.tar").read_bytes()).hexdigest()
    assert cache.fetch(f"{store.url}/w.tar#sha256={good}", tmp_path / "cache", policy()).sha256 == good


# -- the fence -----------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.100.100.200",
    "192.0.0.9", "192.0.0.170", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1", "::1", "fe80::1",
    "fc00::1", "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "2002:a00:1::", "64:ff9b::7f00:1",
    "64:ff9b:1::a00:1", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "ff02::1", "::", "2001:db8::1",
])
def test_every_non_global_address_class_is_refused(address: str) -> None:
    assert not is_reachable_for_callers(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2002:808:808::", "64:ff9b::808:808"])
def test_global_addresses_pass(address: str) -> None:
    assert is_reachable_for_callers(ipaddress.ip_address(address))


def test_one_non_global_answer_refuses_the_host(monkeypatch) -> None:
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    words = "LORA: https://mixed.example:443/x: mixed.example resolves to 127.0.0.1, which is not a global address"
    with pytest.raises(UnsafeURL, match=words):
        download("https://mixed.example/x", FetchPolicy("LORA"), MemorySink("LORA", 100))


def test_connections_go_to_the_checked_address_not_a_second_answer(store, store_dir, monkeypatch) -> None:
    """DNS rebinding: the name answers 127.0.0.1 once, then 127.0.0.2 (nothing listens there). Every
    chunk's connection must use the first answer."""
    data = os.urandom(400_000)
    (store_dir / "blob").write_bytes(data)
    real = socket.getaddrinfo
    calls = []

    def rebinding(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        address = "127.0.0.1" if len(calls) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = store.server_address[1]
    assert fetch_memory(f"http://rebind.test:{port}/blob", concurrency=4, chunk_bytes=50_000) == data
    assert len(calls) == 1 and store.count() == 8


def test_redirects_are_fenced_too(store, store_dir) -> None:
    store.faults.redirect["/hop"] = "http://127.0.0.1:1/secret"
    with pytest.raises(UnsafeURL, match="127.0.0.1, which is not a global address"):
        download(f"{store.url}/hop", FetchPolicy("LORA", trusted=False), MemorySink("LORA", 100))
    assert store.count() == 0  # the first hop itself is loopback: refused before any request


def test_redirect_to_another_scheme_is_refused(store, store_dir) -> None:
    store.faults.redirect["/hop"] = "file:///etc/passwd"
    with pytest.raises(UnsafeURL, match="only http and https URLs are fetched, not 'file'"):
        fetch_memory(f"{store.url}/hop")


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:99999/x", "bad port"),
    ("http://127.0.0.1:abc/x", "bad port"),
    ("http:///x", "no host"),
    ("http://user:pw@127.0.0.1/x", "credentials"),
    ("http://127.0.0.1/x y", "control characters or spaces"),
    ("ftp://127.0.0.1/x", "only http and https"),
    ("/etc/passwd", "only http and https"),
])
def test_unusable_urls_are_refused_naming_the_field(url: str, words: str) -> None:
    with pytest.raises((BadURL, UnsafeURL)) as caught:
        fetch_memory(url)
    assert str(caught.value).startswith("TEST_WEIGHTS: ") and words in str(caught.value)


# -- layouts -------------------------------------------------------------------------------------

def test_a_pget_manifest_builds_a_diffusers_folder(tiny_weights, tmp_path, monkeypatch) -> None:
    """Per-file weights, as Replicate publishes Flux's: one ``URL relative/path`` line per file."""
    from pipeline.loading.weights import resolve_weights

    store = serve(tiny_weights, Faults(rate=0, ttfb=0))
    try:
        files = sorted(p.relative_to(tiny_weights) for p in tiny_weights.rglob("*") if p.is_file())
        sha = {p: hashlib.sha256((tiny_weights / p).read_bytes()).hexdigest() for p in files}
        lines = [f"{store.url}/{p}#sha256={sha[p]} {p}" for p in files]
        (tiny_weights.parent / "listing").mkdir(exist_ok=True)
        manifest_store = serve(tiny_weights.parent / "listing", Faults(rate=0, ttfb=0))
        (tiny_weights.parent / "listing" / "sdxl.manifest").write_text("# tiny SDXL\n" + "\n".join(lines) + "\n")
        monkeypatch.setenv("WEIGHTS_CACHE", str(tmp_path / "cache"))
        source = resolve_weights(f"{manifest_store.url}/sdxl.manifest")
        assert source.layout == "diffusers"
        assert sorted(p.relative_to(source.path) for p in source.path.rglob("*") if p.is_file()) == files
        count = store.count()
        assert resolve_weights(f"{manifest_store.url}/sdxl.manifest").path == source.path and store.count() == count

        (tiny_weights.parent / "listing" / "evil.manifest").write_text(f"{store.url}/model_index.json ../escape.json\n")
        with pytest.raises(Exception, match="not a path inside the folder"):
            resolve_weights(f"{manifest_store.url}/evil.manifest")
        (tiny_weights.parent / "listing" / "bad.manifest").write_text(f"{store.url}/model_index.json#sha256={'0' * 64} x\n")
        with pytest.raises(Exception, match="x failed its checksum"):
            resolve_weights(f"{manifest_store.url}/bad.manifest")
        manifest_store.stop()
    finally:
        store.stop()


def test_a_bare_safetensors_url_is_one_checked_file(store, store_dir, tmp_path) -> None:
    data = safetensors_bytes()
    (store_dir / "model.safetensors").write_bytes(data)
    entry = cache.fetch(f"{store.url}/model.safetensors", tmp_path / "cache", policy(chunk_bytes=4096, concurrency=4))
    assert entry.path.is_file() and entry.path.read_bytes() == data


def test_a_pickle_is_refused_from_its_first_bytes(store, store_dir, tmp_path) -> None:
    (store_dir / "lora.safetensors").write_bytes(b"\x80\x02" + bytes(5_000_000))
    with pytest.raises(FetchError, match="a pickle"):
        cache.fetch(f"{store.url}/lora.safetensors", tmp_path / "cache", policy(chunk_bytes=64 * 1024, concurrency=1))
    assert store.count() < 10  # refused on the first chunk, not after the 77 the file has


# -- what a review found: each case a hostile or broken server could cause ------------------------

def _tar_with(*members: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info in members:
            archive.addfile(info, io.BytesIO((data or {}).get(info.name, b"")))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_a_tar_are_refused(store, store_dir, tmp_path, kind) -> None:
    """Links are how a tar reaches out of its folder (CVE-2025-4517) or rewrites a checked member."""
    first = tarfile.TarInfo("m/a.safetensors")
    payload = safetensors_bytes()
    first.size = len(payload)
    link = tarfile.TarInfo("m/x")
    link.type, link.linkname = kind, "a.safetensors" if kind == tarfile.SYMTYPE else "m/a.safetensors"
    (store_dir / "links.tar").write_bytes(_tar_with(first, link, data={"m/a.safetensors": payload}))
    with pytest.raises(FetchError, match="is a link"):
        cache.fetch(f"{store.url}/links.tar", tmp_path / "cache", policy())


def test_a_member_twice_is_refused(store, store_dir, tmp_path) -> None:
    one, two = tarfile.TarInfo("m/a.bin"), tarfile.TarInfo("m/a.bin")
    one.size = two.size = 3
    (store_dir / "twice.tar").write_bytes(_tar_with(one, two, data={"m/a.bin": b"abc"}))
    with pytest.raises(FetchError, match="appears twice"):
        cache.fetch(f"{store.url}/twice.tar", tmp_path / "cache", policy())


@pytest.mark.parametrize("record", [b"0 path=x\n", b"zz path=x\n", b"99 path=x\n"])
def test_a_malformed_pax_header_is_refused_at_once(store, store_dir, tmp_path, record: bytes) -> None:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    body = tarfile.TarInfo("m/a.bin")
    body.size = 1
    (store_dir / "pax.tar").write_bytes(_tar_with(pax, body, data={"././@PaxHeader": record, "m/a.bin": b"a"}))
    started = time.monotonic()
    with pytest.raises(FetchError, match="TEST_WEIGHTS: .*malformed tar extended header"):
        cache.fetch(f"{store.url}/pax.tar", tmp_path / "cache", policy())
    assert time.monotonic() - started < 5


def test_a_redirect_body_is_never_read(store, store_dir) -> None:
    (store_dir / "blob").write_bytes(b"b" * 1000)
    store.faults.redirect["/hop"] = f"{store.url}/blob"
    store.faults.redirect_body, store.faults.rate = 50_000_000, 10_000_000  # 5 s to read at its rate
    started = time.monotonic()
    assert fetch_memory(f"{store.url}/hop") == b"b" * 1000
    assert time.monotonic() - started < 3


def test_a_partial_answer_without_a_total_is_fetched_whole(store, store_dir) -> None:
    data = os.urandom(300_000)
    (store_dir / "blob").write_bytes(data)
    store.faults.total_unknown = True
    assert fetch_memory(f"{store.url}/blob", chunk_bytes=64 * 1024) == data


def test_one_stream_resumed_past_a_503_keeps_every_byte(store, store_dir) -> None:
    data = os.urandom(400_000)
    (store_dir / "blob").write_bytes(data)
    store.faults.ignore_range = True
    store.faults.reset_after, store.faults.resets = 100_000, 1
    store.faults.error_on = {2}  # the retry after the drop gets a 503 first
    assert fetch_memory(f"{store.url}/blob") == data


def test_a_consumer_that_fails_is_not_retried(store, store_dir) -> None:
    (store_dir / "blob").write_bytes(b"c" * 1_000_000)

    class Refusing:
        def feed(self, data: memoryview) -> None:
            raise FileExistsError("the staging file is there already")

        def finish(self) -> None:
            pass

    with pytest.raises(FetchError, match="TEST_WEIGHTS: could not download .*the staging file is there already"):
        download(f"{store.url}/blob", policy(concurrency=2, chunk_bytes=100_000), Refusing())
    assert store.count() <= 6  # the probe and the workers' first chunks, not five retries of each


def test_a_file_that_changes_during_the_download_is_never_stitched(store, store_dir, tmp_path) -> None:
    import threading

    (store_dir / "blob").write_bytes(os.urandom(2_000_000))
    store.faults.rate = 2_000_000  # 1 s per connection for its chunks
    threading.Timer(0.3, lambda: (store_dir / "blob").write_bytes(os.urandom(2_000_000))).start()
    with pytest.raises(FetchError, match="changed or stopped honouring range requests"):
        fetch_memory(f"{store.url}/blob", concurrency=2, chunk_bytes=250_000)


def test_a_file_without_a_length_or_a_checkable_end_is_not_kept(store, store_dir, tmp_path) -> None:
    (store_dir / "w.bin").write_bytes(b"\x01" * 5000)
    store.faults.no_length, store.faults.ignore_range = True, True
    with pytest.raises(Incomplete, match="announced no length"):
        cache.fetch(f"{store.url}/w.bin", tmp_path / "cache", policy())


def test_a_safetensors_header_length_that_looks_like_a_pickle_is_not_refused(store, store_dir, tmp_path) -> None:
    for pad in range(300):  # find a header whose length's low byte is 0x80, the pickle marker
        header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"p": "x" * pad}})
        if len(header) % 256 == 0x80:
            break
    data = struct.pack("<Q", len(header)) + header.encode() + bytes(8)
    assert data[:1] == b"\x80"
    (store_dir / "odd.safetensors").write_bytes(data)
    entry = cache.fetch(f"{store.url}/odd.safetensors", tmp_path / "cache", policy())
    assert entry.path.read_bytes() == data


def test_failed_tar_downloads_leave_no_open_files(store, store_dir, tmp_path) -> None:
    payload = tar_of({"m/a.safetensors": safetensors_bytes(100_000)})
    (store_dir / "w.tar").write_bytes(payload)
    store.faults.no_length, store.faults.ignore_range, store.faults.truncate_at = True, True, len(payload) // 2
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(Incomplete):
            cache.fetch(f"{store.url}/w.tar", tmp_path / "cache", policy())
    assert len(os.listdir("/proc/self/fd")) <= before


def test_an_entry_left_without_its_record_is_replaced(store, store_dir, tmp_path) -> None:
    (store_dir / "w.tar").write_bytes(tar_of({"m/a.bin": b"new"}))
    url = f"{store.url}/w.tar"
    folder = tmp_path / "cache"
    orphan = folder / f"{cache.entry_key(url)}-w"
    orphan.mkdir(parents=True)
    (orphan / "a.bin").write_bytes(b"old")  # a start that died between the rename and the record
    entry = cache.fetch(url, folder, policy())
    assert (entry.path / "a.bin").read_bytes() == b"new"


def test_a_manifest_has_one_deadline_for_all_its_files(tmp_path) -> None:
    """Eight dripping files, four fetched at a time: the manifest ends at its deadline, not after two
    rounds of per-file deadlines."""
    files, listing = tmp_path / "files", tmp_path / "listing"
    files.mkdir()
    listing.mkdir()
    names = [f"f{i}.bin" for i in range(8)]
    for name in names:
        (files / name).write_bytes(b"d" * 5000)
    dripping = serve(files, Faults(rate=0, ttfb=0, drip=0.01))  # 50 s a file
    plain = serve(listing, Faults(rate=0, ttfb=0))
    (listing / "w.manifest").write_text("".join(f"{dripping.url}/{name} {name}\n" for name in names))
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="deadline"):
            cache.fetch_manifest(f"{plain.url}/w.manifest", tmp_path / "cache", policy(deadline_s=1.5))
    finally:
        dripping.stop()
        plain.stop()
    assert time.monotonic() - started < 2.5
