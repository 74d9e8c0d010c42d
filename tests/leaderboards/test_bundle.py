"""Results bundles: written from a store, accepted by the leaderboard, and refused when anything is off."""

from __future__ import annotations

import json
import sqlite3
import zipfile

import pandas as pd
import pytest

from vlamergebench.eval.bundle import BundleError, open_bundle, write_bundle
from vlamergebench.eval.results import load_results
from vlamergebench.eval.store import StoreError
from vlamergebench.leaderboards.registry import build_leaderboards


@pytest.fixture(scope="module")
def bundle(store_dir, tmp_path_factory):
    return write_bundle(
        store_dir, tmp_path_factory.mktemp("bundle") / "results.zip", "hand-made test results"
    )


def _rezip(source, destination, manifest=None, store_bytes=None, extra=None):
    """A copy of bundle ``source`` with the manifest, the store or extra members replaced."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if manifest is not None:
        members["manifest.json"] = json.dumps(manifest).encode()
    if store_bytes is not None:
        members["results.sqlite"] = store_bytes
    members.update(extra or {})
    with zipfile.ZipFile(destination, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return destination


def _manifest(bundle_path):
    with zipfile.ZipFile(bundle_path) as archive:
        return json.loads(archive.read("manifest.json"))


def test_bundle_round_trip_gives_the_same_leaderboard(bundle, built, tmp_path):
    with open_bundle(bundle) as (manifest, store_file):
        assert manifest["description"] == "hand-made test results"
        assert {run["method"] for run in manifest["runs"]} == {"ties", "carve", "ta", "base"}
        assert sum(run["episodes"] for run in manifest["runs"]) == 12 * 4 + 24 + 8
        assert manifest["runs"][0]["versions"] == [{"mujoco": "3.17.0", "torch": "2.13.0"}]
        assert store_file.is_file()
    build_leaderboards([bundle], tmp_path, ["success"])
    from_bundle = pd.read_csv(tmp_path / "success_overall.csv")
    from_store = pd.read_csv(built[0] / "success_overall.csv")
    assert from_bundle.equals(from_store)


def test_a_run_given_twice_is_refused(bundle, store_dir):
    with pytest.raises(StoreError, match="is in both"):
        load_results([store_dir, bundle])


def test_tampered_bundles_are_refused(bundle, tmp_path):
    manifest = _manifest(bundle)
    extra_field = {**manifest, "run_this": "rm -rf /"}
    with pytest.raises(BundleError, match=r"field \(top level\): Additional properties"):
        load_results([_rezip(bundle, tmp_path / "a.zip", manifest=extra_field)])

    bad_hash = {
        **manifest,
        "runs": [{**manifest["runs"][0], "method_config_hash": "xyz"}, *manifest["runs"][1:]],
    }
    with pytest.raises(BundleError, match="runs/0/method_config_hash"):
        load_results([_rezip(bundle, tmp_path / "b.zip", manifest=bad_hash)])

    wrong_count = {**manifest, "runs": [{**manifest["runs"][0], "episodes": 1}, *manifest["runs"][1:]]}
    with pytest.raises(BundleError, match=r"base-oracle-one_shot-\w+ field episodes is 1, the store says 12"):
        load_results([_rezip(bundle, tmp_path / "c.zip", manifest=wrong_count)])

    with pytest.raises(BundleError, match=r"exactly \['manifest.json', 'results.sqlite'\], found"):
        load_results([_rezip(bundle, tmp_path / "d.zip", extra={"../../evil.py": b"print(1)"})])

    with zipfile.ZipFile(bundle) as archive:
        store_bytes = bytearray(archive.read("results.sqlite"))
    store_bytes[-1] ^= 0xFF
    with pytest.raises(BundleError, match="does not match the size and sha256"):
        load_results([_rezip(bundle, tmp_path / "e.zip", store_bytes=bytes(store_bytes))])

    (tmp_path / "f.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(BundleError, match="not a ZIP bundle"):
        load_results([tmp_path / "f.zip"])


def test_a_store_with_a_trigger_is_refused_even_with_a_matching_hash(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as archive:
        (tmp_path / "results.sqlite").write_bytes(archive.read("results.sqlite"))
    db = sqlite3.connect(tmp_path / "results.sqlite")
    db.execute("CREATE TRIGGER t AFTER INSERT ON runs BEGIN DELETE FROM episodes; END")
    db.commit()
    db.close()
    altered = (tmp_path / "results.sqlite").read_bytes()
    import hashlib

    manifest = _manifest(bundle)
    manifest["store"] = {
        **manifest["store"],
        "bytes": len(altered),
        "sha256": hashlib.sha256(altered).hexdigest(),
    }
    with pytest.raises(BundleError, match=r"schema differs .* extra \['t'\]"):
        load_results([_rezip(bundle, tmp_path / "g.zip", manifest=manifest, store_bytes=altered)])


def test_bundle_directory_form(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "dir")
    assert len(load_results([tmp_path / "dir"]).runs) == 5
    (tmp_path / "dir" / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match="bundle directory holds exactly"):
        load_results([tmp_path / "dir"])


def test_a_store_member_larger_than_declared_is_refused_before_it_is_decompressed(bundle, tmp_path):
    import tracemalloc

    manifest = _manifest(bundle)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("results.sqlite", bytes(64 << 20))  # 64 MiB of zeros: about 64 KiB compressed
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        refused = f"{64 << 20} bytes uncompressed, but manifest.json declares"
        with pytest.raises(BundleError, match=refused), open_bundle(bomb):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_deeply_nested_manifest_is_one_clear_error(bundle, tmp_path):
    deep = tmp_path / "deep.zip"
    with zipfile.ZipFile(bundle) as archive:
        store = archive.read("results.sqlite")
    with zipfile.ZipFile(deep, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", "[" * 200_000 + "]" * 200_000)
        archive.writestr("results.sqlite", store)
    with pytest.raises(BundleError, match="manifest.json is nested too deeply"), open_bundle(deep):
        pass
