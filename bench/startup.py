"""Time from process start to SERVING for each server (target: under 2 s torch-free).

Each server is started three times on a fresh root and the median is reported; a bare
`python -c "import grpc"` is timed the same way as the floor any Python server pays.
Last line: `startup: invoker_ms=X model_manager_ms=X downloader_ms=X inference_ms=X`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.processes import SERVICE_MODULES, start_service, suite_env, wait_serving

RUNS = 3


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def python_floor() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import grpc"], check=True)
    return time.monotonic() - started


def time_to_serving(name: str) -> float:
    with tempfile.TemporaryDirectory() as root:
        env = suite_env(Path(root))
        service = start_service(name, env, Path(root))
        try:
            return wait_serving(service, poll_s=0.002)
        finally:
            service.stop()


def main() -> None:
    floor = median_ms([python_floor() for _ in range(RUNS)])
    results = {
        name: median_ms([time_to_serving(name) for _ in range(RUNS)]) for name in SERVICE_MODULES
    }
    print(f"baseline: python_import_grpc_ms={floor}")
    order = ["invoker", "model_manager", "downloader", "inference"]
    print("startup: " + " ".join(f"{name}_ms={results[name]}" for name in order))


if __name__ == "__main__":
    main()
