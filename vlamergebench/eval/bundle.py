"""Results bundles: a store snapshot plus a provenance manifest that anyone can publish and anyone can read.

A bundle is a ZIP file (or a directory) holding exactly two files:

- ``manifest.json``, validated against ``bundle.schema.json`` (JSON Schema 2020-12): format and version, who
  made it (vlamergebench version, git revision), the store's byte count and SHA-256, and one entry per run
  (method, config hash, expert set id, protocol, routing, seed, episode count, package versions, git
  revisions);
- ``results.sqlite``, a single-file snapshot of a results store.

Rollout videos are not in a bundle: the store's ``videos`` rows travel (each with its small JPEG poster, its
frame count and the MP4's SHA-256), the MP4 files stay with the run (a bundle is meant to be a few hundred KB
that a repository can hold; ``vlamergebench export`` carries the files).

Reading a bundle executes nothing from it: the manifest is JSON; the archive may hold no other member and no
path; the manifest is read and validated first, a store member whose header claims more bytes than the
manifest declares is refused before decompression, and members are streamed to disk with that cap (memory
stays at one block whatever the archive claims); the store's hash must match the manifest; the store is
opened read-only with ``trusted_schema`` off and its schema must be exactly ours
(``ResultsStore.open(readonly=True)``), so no view or trigger of the bundle's making can run; and the
manifest's runs must agree with the store's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from vlamergebench.eval.store import STORE_FILE, ResultsStore, StoreError
from vlamergebench.provenance import git_revision, package_versions

BUNDLE_FORMAT = "vlamergebench-results-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_STORE_BYTES = 2 << 30


class BundleError(ValueError):
    """A bundle is malformed or inconsistent; the message names the file and field."""


def bundle_schema() -> dict[str, Any]:
    """The JSON schema every manifest must satisfy."""
    return json.loads(resources.files(__package__).joinpath("bundle.schema.json").read_text())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_runs(store: ResultsStore) -> list[dict[str, Any]]:
    runs = store.runs_frame()
    episodes = store.episodes_frame()
    entries = []
    for run in runs.itertuples():
        mine = episodes[episodes["run_id"] == run.run_id]
        entries.append(
            {
                "run_id": run.run_id,
                "method": run.method,
                "method_config_hash": run.method_config_hash,
                "expert_set_id": run.expert_set_id,
                "protocol": run.protocol,
                "routing_mode": run.routing_mode,
                "router": None if run.router is None else str(run.router),
                "run_seed": int(run.run_seed),
                "settings": json.loads(run.settings_json),
                "skills": list(run.skills),
                "episodes": len(mine),
                "versions": [json.loads(text) for text in sorted(set(mine["versions_json"]))],
                "git_revisions": sorted({str(v) for v in mine["git_rev"]}),
            }
        )
    return entries


def write_bundle(
    store_path: str | os.PathLike[str], destination: str | os.PathLike[str], description: str = ""
) -> Path:
    """Snapshot the store at ``store_path`` into the bundle ZIP ``destination`` (which must not exist)."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination}: already exists")
    with tempfile.TemporaryDirectory(prefix="bundle-") as scratch:
        snapshot = Path(scratch) / STORE_FILE
        with ResultsStore.open(store_path, readonly=True) as store:
            store.copy_to(snapshot)
        with ResultsStore.open(snapshot, readonly=True) as store:
            runs = _manifest_runs(store)
            schema_version = store.schema_version
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_by": {"vlamergebench": package_versions()["vlamergebench"], "git_rev": git_revision()},
            "description": description,
            "store": {
                "file": STORE_FILE,
                "bytes": snapshot.stat().st_size,
                "sha256": _sha256(snapshot),
                "schema_version": schema_version,
            },
            "runs": runs,
        }
        validate_manifest(manifest, str(destination))
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))
            archive.write(snapshot, STORE_FILE)
        os.replace(partial, destination)
    return destination


def validate_manifest(manifest: Any, where: str) -> None:
    """Check ``manifest`` against :func:`bundle_schema`; the error names the failing field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(bundle_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda error: list(error.absolute_path))
    if errors:
        first = errors[0]
        field = "/".join(str(part) for part in first.absolute_path) or "(top level)"
        raise BundleError(f"{where}: {MANIFEST_FILE} field {field}: {first.message}")


def _parse_manifest(text: bytes, where: Path) -> dict[str, Any]:
    """The manifest's JSON, validated against the schema; anything else raises :class:`BundleError`."""
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{where}: {MANIFEST_FILE} is not valid JSON ({error})") from None
    except RecursionError:
        raise BundleError(f"{where}: {MANIFEST_FILE} is nested too deeply to be a manifest") from None
    validate_manifest(manifest, str(where))
    return manifest


def _declared_store_bytes(manifest: Mapping[str, Any], where: Path) -> int:
    declared = int(manifest["store"]["bytes"])
    if declared > MAX_STORE_BYTES:
        raise BundleError(
            f"{where}: {MANIFEST_FILE} field store/bytes is {declared}, more than the {MAX_STORE_BYTES} "
            "a bundle may hold"
        )
    return declared


def _check_member_size(info: zipfile.ZipInfo, expected: int, where: Path, what: str) -> None:
    """Refuse a member before decompressing it when its header claims more than ``expected`` bytes."""
    if info.flag_bits & 0x1:
        raise BundleError(f"{where}: member {info.filename} is encrypted")
    if info.file_size > expected:
        raise BundleError(
            f"{where}: member {info.filename} is {info.file_size} bytes uncompressed, {what} {expected}"
        )


def _copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limit: int, where: Path
) -> None:
    """Stream a member to ``target`` in 1 MiB blocks, stopping as soon as it passes ``limit`` bytes."""
    written = 0
    try:
        with archive.open(info) as source, target.open("wb") as sink:
            for block in iter(lambda: source.read(1 << 20), b""):
                written += len(block)
                if written > limit:
                    raise BundleError(f"{where}: member {info.filename} is larger than {limit} bytes")
                sink.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise BundleError(f"{where}: member {info.filename} is damaged ({error})") from None


def _unpack(path: Path, scratch: Path) -> dict[str, Any]:
    """Copy a bundle's two files into ``scratch`` (from a ZIP or a directory) and return its manifest.

    The manifest is read and validated first, so the store is never decompressed past the size it declares.
    """
    expected = {MANIFEST_FILE, STORE_FILE}
    if path.is_dir():
        present = {entry.name for entry in path.iterdir()}
        if present != expected:
            raise BundleError(
                f"{path}: a bundle directory holds exactly {sorted(expected)}, found {sorted(present)}"
            )
        if (path / MANIFEST_FILE).stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = _parse_manifest((path / MANIFEST_FILE).read_bytes(), path)
        declared = _declared_store_bytes(manifest, path)
        if (path / STORE_FILE).stat().st_size != declared:
            raise BundleError(f"{path}: {STORE_FILE} does not match the size in {MANIFEST_FILE}")
        shutil.copyfile(path / STORE_FILE, scratch / STORE_FILE)
        return manifest
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path}: not a ZIP bundle")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if sorted(names) != sorted(expected):
            raise BundleError(f"{path}: a bundle holds exactly {sorted(expected)}, found {sorted(names)}")
        info = archive.getinfo(MANIFEST_FILE)
        _check_member_size(info, MAX_MANIFEST_BYTES, path, "more than the limit of")
        _copy_member(archive, info, scratch / MANIFEST_FILE, MAX_MANIFEST_BYTES, path)
        manifest = _parse_manifest((scratch / MANIFEST_FILE).read_bytes(), path)
        declared = _declared_store_bytes(manifest, path)
        info = archive.getinfo(STORE_FILE)
        _check_member_size(info, declared, path, f"but {MANIFEST_FILE} declares")
        _copy_member(archive, info, scratch / STORE_FILE, declared, path)
    return manifest


def _check_against_store(manifest: Mapping[str, Any], store_file: Path, where: Path) -> None:
    declared = manifest["store"]
    if store_file.stat().st_size != declared["bytes"] or _sha256(store_file) != declared["sha256"]:
        raise BundleError(f"{where}: {STORE_FILE} does not match the size and sha256 in {MANIFEST_FILE}")
    with ResultsStore.open(store_file, readonly=True) as store:
        store.check_integrity()
        actual = {run["run_id"]: run for run in _manifest_runs(store)}
        if store.schema_version != declared["schema_version"]:
            raise BundleError(
                f"{where}: {MANIFEST_FILE} field store/schema_version is {declared['schema_version']}, the "
                f"store's is {store.schema_version}"
            )
    listed = {run["run_id"]: run for run in manifest["runs"]}
    if set(actual) != set(listed):
        raise BundleError(
            f"{where}: manifest runs {sorted(listed)} differ from the store's runs {sorted(actual)}"
        )
    for run_id, run in listed.items():
        for field, value in run.items():
            if actual[run_id][field] != value:
                found = actual[run_id][field]
                raise BundleError(
                    f"{where}: manifest run {run_id} field {field} is {value!r}, the store says {found!r}"
                )


@contextmanager
def open_bundle(path: str | os.PathLike[str]) -> Iterator[tuple[dict[str, Any], Path]]:
    """Validate the bundle at ``path`` and yield ``(manifest, store file)``; the files live until exit.

    Raises:
        BundleError: any check of the module docstring fails.
        StoreError: the store is not a results store of this schema.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="bundle-") as scratch:
        unpacked = Path(scratch)
        manifest = _unpack(path, unpacked)
        try:
            _check_against_store(manifest, unpacked / STORE_FILE, path)
        except StoreError as error:
            raise BundleError(f"{path}: {error}") from None
        yield manifest, unpacked / STORE_FILE


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a bundle (a ``.zip`` file, or a directory with ``manifest.json``)."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".zip") or (path / MANIFEST_FILE).is_file()
