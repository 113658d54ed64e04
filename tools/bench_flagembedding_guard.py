"""What the FlagEmbedding guard costs at load time: BGEM3FlagModel unguarded vs guarded.

Builds a small bge-m3-shaped model (tests/helpers/bge_m3.py; default hidden 384, 6 layers,
float32 heads) in a temporary folder, then times, in one process, N loads each:
unguarded; guarded with a manifest (modelguard.yaml in the folder); guarded with no
manifest (head files still opened and checked). Prints the median seconds.

    .venv/bin/python tools/bench_flagembedding_guard.py [--hidden 384] [--layers 6] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from helpers.bge_m3 import load_bge_m3, make_tiny_bge_m3, tiny_bge_m3_manifest

    import modelguard
    from modelguard import guard
    from modelguard.manifest import save_manifest

    with tempfile.TemporaryDirectory() as tmp:
        plain = make_tiny_bge_m3(Path(tmp) / "plain", hidden=args.hidden, layers=args.layers,
                                 head_dtype="float32")
        pinned = make_tiny_bge_m3(Path(tmp) / "pinned", hidden=args.hidden, layers=args.layers,
                                  head_dtype="float32")
        save_manifest(tiny_bge_m3_manifest(pinned), pinned / "modelguard.yaml")
        size = sum(p.stat().st_size for p in pinned.iterdir())
        load_bge_m3(plain)  # warm imports and the page cache

        def timed(path) -> float:
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                load_bge_m3(path)
                runs.append(time.perf_counter() - start)
            return statistics.median(runs)

        unguarded = timed(pinned)
        modelguard.install(unknown="allow")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with_manifest = timed(pinned)
            without_manifest = timed(plain)
        guard.uninstall()

    print(f"model: hidden {args.hidden}, {args.layers} layers, {size / 1e6:.1f} MB on disk; "
          f"median of {args.repeat} loads")
    print(f"  unguarded                  {unguarded:.3f} s")
    print(f"  guarded, manifest          {with_manifest:.3f} s  (+{with_manifest - unguarded:.3f} s)")
    print(f"  guarded, no manifest       {without_manifest:.3f} s  (+{without_manifest - unguarded:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
