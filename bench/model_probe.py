"""Probe and hash costs of the model manager.

Probing reads a safetensors header only, so probing a 2 GiB (sparse) checkpoint must cost
what probing a 1 MiB one does (`probe_growth` near 1). Hashing a 512 MiB file with BLAKE3
is compared with plainly reading the same file, both from a warm page cache
(`hash_vs_read` = hash throughput / read throughput).
Last line: `model_probe: probe_1m_ms=X probe_2g_ms=X probe_growth=R hash_mib_s=X
read_mib_s=X hash_vs_read=R`.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.model_manager.hashing import hash_model
from services.model_manager.probe import probe_model
from tests.model_fixtures import write_sparse_checkpoint

PROBES = 200
HASH_RUNS = 3
HASH_FILE_MIB = 512
CHUNK = 16 * 1024**2


def median_s(action: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def read_all(path: Path) -> None:
    buffer = bytearray(CHUNK)
    with path.open("rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        small = write_sparse_checkpoint(root / "small.safetensors", 1024**2)
        large = write_sparse_checkpoint(root / "large.safetensors", 2 * 1024**3)
        probe_1m = median_s(lambda: probe_model(small), PROBES) * 1000
        probe_2g = median_s(lambda: probe_model(large), PROBES) * 1000

        data = root / "weights.safetensors"
        block = random.Random(0).randbytes(CHUNK)
        with data.open("wb") as file:
            for _ in range(HASH_FILE_MIB * 1024**2 // CHUNK):
                file.write(block)
        read_all(data)  # warm the page cache
        read_s = median_s(lambda: read_all(data), HASH_RUNS)
        hash_s = median_s(lambda: hash_model(data), HASH_RUNS)

    read_mib_s = HASH_FILE_MIB / read_s
    hash_mib_s = HASH_FILE_MIB / hash_s
    print(f"probe: median of {PROBES}; hash/read: {HASH_FILE_MIB} MiB, median of {HASH_RUNS}")
    print(
        f"model_probe: probe_1m_ms={probe_1m:.3f} probe_2g_ms={probe_2g:.3f} "
        f"probe_growth={probe_2g / probe_1m:.2f} hash_mib_s={hash_mib_s:.0f} "
        f"read_mib_s={read_mib_s:.0f} hash_vs_read={hash_mib_s / read_mib_s:.2f}"
    )


if __name__ == "__main__":
    main()
