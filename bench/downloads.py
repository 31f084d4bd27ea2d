"""Download throughput on loopback: Easel's downloader against the plain baselines.

From one local server (the HuggingFace Hub stand-in, serving files from disk):
- one 1 GiB file: an Easel job vs one `curl`;
- 8 x 128 MiB files: 8 Easel jobs at once vs 8 `curl`s in parallel;
- the same 8 files as one Easel multi-file job vs `huggingface_hub.snapshot_download`.
Each timing is the best of RUNS runs; ratios are baseline time / Easel time (above 1 means
Easel is faster). Last line:
`downloads: single_vs_curl=R parallel_vs_curl=R multifile_vs_snapshot=R`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from tests.processes import free_port, start_service, suite_env, wait_serving

RUNS = 5
MIB = 1024 * 1024
BIG = 1024 * MIB
SHARD = 128 * MIB
SHARDS = 8

SNAPSHOT = """
import sys, time
from huggingface_hub import snapshot_download
started = time.perf_counter()
snapshot_download("bench/shards", cache_dir=sys.argv[1])
print(time.perf_counter() - started)
"""


def make_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB)
    with path.open("wb") as file:
        for _ in range(size // MIB):
            file.write(block)


def best(samples: list[float]) -> float:
    return min(samples)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def curl(urls: list[str], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        processes = [
            subprocess.Popen(["curl", "-sf", "-o", str(out / f"{i}.bin"), url])
            for i, url in enumerate(urls)
        ]
        assert all(p.wait() == 0 for p in processes)

    elapsed = timed(run)
    shutil.rmtree(out)
    return elapsed


async def easel(stub, requests: list[pb.CreateDownloadJobRequest], out: Path) -> float:
    started = time.perf_counter()
    jobs = [(await stub.CreateDownloadJob(request)).job for request in requests]
    for job in jobs:
        done = (await stub.WaitDownloadJob(pb.WaitDownloadJobRequest(id=job.id))).job
        assert done.status == pb.DOWNLOAD_JOB_STATUS_COMPLETED, done.error
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed


def snapshot(endpoint: str, cache: Path) -> float:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, str(cache)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(cache)
    return float(done.stdout.strip().splitlines()[-1])


async def easel_timings(address: str, big_url: str, shard_urls: list[str], out: Path):
    """Best times of the single file, the 8 files as 8 jobs, and as one multi-file job."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = download_service_pb2_grpc.DownloadServiceStub(channel)
        single = [pb.CreateDownloadJobRequest(single_source=big_url, dest_dir=str(out))]
        parallel = [
            pb.CreateDownloadJobRequest(single_source=url, dest_dir=str(out), filename=f"{i}.bin")
            for i, url in enumerate(shard_urls)
        ]
        files = [
            pb.MultiFileSourceFile(url=url, path=f"part-{i}.bin", size=SHARD)
            for i, url in enumerate(shard_urls)
        ]
        multi = [
            pb.CreateDownloadJobRequest(
                multi_file=pb.MultiFileSource(files=files), dest_dir=str(out)
            )
        ]
        return (
            best([await easel(stub, single, out) for _ in range(RUNS)]),
            best([await easel(stub, parallel, out) for _ in range(RUNS)]),
            best([await easel(stub, multi, out) for _ in range(RUNS)]),
        )


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("EASEL_BENCH_DIR")) as work:
        work_dir = Path(work)
        hub_root = work_dir / "hub"
        make_file(hub_root / "bench" / "single" / "big.bin", BIG)
        for i in range(SHARDS):
            make_file(hub_root / "bench" / "shards" / f"part-{i}.bin", SHARD)
        port = free_port()
        hub = subprocess.Popen(
            [sys.executable, "-m", "tests.hf_hub", "--root", str(hub_root), "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        env = suite_env(work_dir)
        env["EASEL_ALLOWED_NETWORKS"] = json.dumps(["127.0.0.0/8"])
        env["EASEL_FREE_SPACE_RESERVE_BYTES"] = "0"
        downloader = start_service("downloader", env, work_dir)
        try:
            wait_serving(downloader)
            endpoint = f"http://127.0.0.1:{port}"
            big_url = f"{endpoint}/bench/single/resolve/main/big.bin"
            shard_urls = [
                f"{endpoint}/bench/shards/resolve/main/part-{i}.bin" for i in range(SHARDS)
            ]
            for _ in range(100):  # the hub comes up; curl warms the page cache
                if subprocess.run(["curl", "-sf", "-o", "/dev/null", big_url]).returncode == 0:
                    break
                time.sleep(0.1)
            for url in shard_urls:
                subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)

            out = work_dir / "out"
            curl_single = best([curl([big_url], out) for _ in range(RUNS)])
            curl_parallel = best([curl(shard_urls, out) for _ in range(RUNS)])
            easel_single, easel_parallel, easel_multi = asyncio.run(
                easel_timings(downloader.address, big_url, shard_urls, out)
            )
            snapshot_time = best([snapshot(endpoint, work_dir / "hf") for _ in range(RUNS)])
        finally:
            downloader.stop()
            hub.terminate()
            hub.wait()

    def mib_s(size: int, seconds: float) -> float:
        return round(size / MIB / seconds)

    total = SHARD * SHARDS
    print(
        "throughput_mib_s: "
        f"curl_single={mib_s(BIG, curl_single)} easel_single={mib_s(BIG, easel_single)} "
        f"curl_parallel={mib_s(total, curl_parallel)} "
        f"easel_parallel={mib_s(total, easel_parallel)} "
        f"snapshot={mib_s(total, snapshot_time)} easel_multifile={mib_s(total, easel_multi)}"
    )
    print(
        f"downloads: single_vs_curl={curl_single / easel_single:.2f} "
        f"parallel_vs_curl={curl_parallel / easel_parallel:.2f} "
        f"multifile_vs_snapshot={snapshot_time / easel_multi:.2f}"
    )


if __name__ == "__main__":
    main()
