"""``modelguard fetch ORG/NAME`` for a model no manifest or lock describes: the cached snapshot's
listing (saved at download, else the Hub's fetched now) says what to download and verify, so a
broken or missing file is repaired with the fetch machinery's guarantees, zero configuration.

The real huggingface_hub client downloads from the test Hub (tests/hubserver.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

from modelguard.hfcache import repo_folder

need("huggingface_hub")

MODEL = "org/listed"
WEIGHTS = "model.safetensors"


@pytest.fixture
def downloaded(hub) -> tuple[str, Path, dict[str, bytes]]:
    """``MODEL`` published and fetched with snapshot_download (listing saved). Returns (commit, snapshot, files)."""
    from hubserver import tiny_model_files
    from huggingface_hub import snapshot_download

    files = {**tiny_model_files(), "README.md": b"# listed\n"}
    commit = hub.add_repo(MODEL, files)
    snap = Path(snapshot_download(MODEL, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=hub.endpoint))
    assert (repo_folder(MODEL) / "trees" / f"{commit}.json").is_file()
    return commit, snap, files


def damage(snap: Path) -> bytes:
    """Flip a byte of the weights' blob and delete the link of config.json; returns the bad bytes."""
    blob = Path(os.path.realpath(snap / WEIGHTS))
    bad = bytearray(blob.read_bytes())
    bad[-40] ^= 0x55
    blob.write_bytes(bytes(bad))
    (snap / "config.json").unlink()
    return bytes(bad)


def test_fetch_repairs_a_model_described_only_by_its_saved_listing(hub, downloaded):
    commit, snap, files = downloaded
    bad = damage(snap)
    assert run_cli("verify", MODEL, env={"HF_HUB_OFFLINE": "1"}).returncode == 1

    proc = run_cli("fetch", MODEL, "--json")
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    actions = {a["path"]: a for a in doc["actions"]}
    assert actions[WEIGHTS]["action"] == "repaired" and actions[WEIGHTS]["diagnosis"] == "digest_mismatch"
    assert actions["config.json"]["action"] == "downloaded" and actions["config.json"]["diagnosis"] == "missing"
    assert {actions[p]["action"] for p in actions if p not in (WEIGHTS, "config.json")} == {"kept"}
    assert doc["expectations"]["origin"] == "hub-listing"
    assert Path(actions[WEIGHTS]["kept_aside"]).read_bytes() == bad  # the old bytes, kept aside
    assert (snap / WEIGHTS).read_bytes() == files[WEIGHTS]
    assert (snap / "config.json").read_bytes() == files["config.json"]

    ok = run_cli("verify", MODEL, "--json", env={"HF_HUB_OFFLINE": "1"})
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["expectations"]["origin"] == "hub-listing"


def test_fetch_with_no_saved_listing_uses_the_hubs_listing_online_and_refuses_offline(hub, downloaded):
    commit, snap, files = downloaded
    (repo_folder(MODEL) / "trees" / f"{commit}.json").unlink()
    damage(snap)

    offline = run_cli("fetch", MODEL, env={"HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in offline.stderr + offline.stdout, offline.stderr
    assert offline.returncode == 2, offline.stdout + offline.stderr
    lines = offline.stderr.splitlines()
    assert lines[0] == (f"modelguard: error: no manifest or lock entry describes {MODEL}, and its snapshot {snap} "
                        "has no listing saved at download to fetch by (HF_HUB_OFFLINE is set)"), offline.stderr
    assert (f"  fix:      unset HF_HUB_OFFLINE, then run `modelguard fetch {MODEL}` (the Hub's listing of commit "
            f"{commit} is used)") in lines, offline.stderr
    assert not (snap / "config.json").exists()  # nothing downloaded

    proc = run_cli("fetch", MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"  repaired    {WEIGHTS}: repaired (" in proc.stdout
    assert "  downloaded  config.json: downloaded (" in proc.stdout
    assert (snap / "config.json").read_bytes() == files["config.json"]
    assert not (repo_folder(MODEL) / "trees").exists() or not any((repo_folder(MODEL) / "trees").iterdir())
    assert run_cli("verify", MODEL).returncode == 0
