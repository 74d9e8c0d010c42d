"""The ``fast`` render profile: LIBERO scenes rendered with decimated visual meshes.

A LIBERO camera frame is geometry-bound on a CPU renderer: the visual meshes of one scene hold about a
million vertices (LIBERO-Object's basket alone 199k), physics a small fraction of that work. The fast
profile renders the same scene with every large *visual-only* mesh (no geom using it collides) decimated to
:data:`KEEP_FRACTION` of its triangles by quadric edge collapse (the ``fast-simplification`` library, a
wrapper of Sven Forstmann's Fast-Quadric-Mesh-Simplification). Collision meshes, masses, inertias, lights,
textures and cameras are untouched, so the physics is that of the full profile; the pixels are not
(``benchmarks/render_fidelity.py`` measures how far), which is why the profile is opt-in and recorded as part
of an entry's evaluation settings.

How: the simulator is first compiled as LIBERO builds it; the visual-only meshes are read off that compiled
model; robosuite's XML processor then points those ``<mesh file=...>`` at decimated copies before the model is
compiled again (the hard reset every LiberoEnv does once). The copies live in a local cache,
``$VLAMERGEBENCH_CACHE_DIR/meshes`` (default ``~/.cache/vlamergebench/meshes``), keyed by the source file's
SHA-256, the kept fraction and :data:`ALGORITHM`; each is written once (atomically) and reused by every later
env, process and run. The installed assets are only ever read.

Mesh files: MuJoCo's binary ``.msh`` (per-vertex positions, normals, texture coordinates, then faces) and
Wavefront ``.obj`` (positions, texture coordinates, faces). Both are welded (corners with equal position and
texture coordinate become one vertex) so the decimation sees the surface's connectivity. A mesh drawn with
a texture keeps the original positions and texture coordinates of its surviving vertices (the library's
collapse replay), so the texture stays mapped; an untextured one (the robot's links) gets the collapses'
optimal positions, which keep its shape better. Normals are left to MuJoCo to compute. Other formats
(``.stl``) are left as they are.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RENDER_PROFILES = ("full", "fast")
KEEP_FRACTION = 0.1  # of the triangles of a decimated mesh
MIN_FACES = 2_000  # smaller meshes cost little to render and are left as they are
ALGORITHM = "fqms-replay-1"  # changes whenever the decimation below changes, so old copies are not reused
_FORMATS = (".msh", ".obj")


def check_render_profile(profile: str, flag: str = "render_profile") -> str:
    """``profile`` if it is one of :data:`RENDER_PROFILES`, else ``ValueError`` naming ``flag``."""
    if profile not in RENDER_PROFILES:
        raise ValueError(f"{flag} {profile!r}: expected one of {', '.join(RENDER_PROFILES)}")
    return profile


def mesh_cache_dir() -> Path:
    """``$VLAMERGEBENCH_CACHE_DIR/meshes``, default ``~/.cache/vlamergebench/meshes``."""
    base = os.environ.get("VLAMERGEBENCH_CACHE_DIR") or Path.home() / ".cache" / "vlamergebench"
    return Path(base) / "meshes"


@dataclass(frozen=True)
class Mesh:
    """A welded triangle mesh: ``positions (n, 3)``, ``texcoords (n, 2)`` or None, ``faces (m, 3)``."""

    positions: np.ndarray
    texcoords: np.ndarray | None
    faces: np.ndarray


def _weld(corner_positions: np.ndarray, corner_texcoords: np.ndarray | None) -> Mesh:
    """One vertex per distinct (position, texture coordinate) among the corners; degenerate faces dropped."""
    attributes = corner_positions
    if corner_texcoords is not None:
        attributes = np.hstack([corner_positions, corner_texcoords])
    unique, inverse = np.unique(attributes.astype(np.float32), axis=0, return_inverse=True)
    faces = inverse.reshape(-1, 3).astype(np.int64)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    texcoords = None if corner_texcoords is None else unique[:, 3:5]
    return Mesh(unique[:, :3], texcoords, faces)


def read_msh(path: Path) -> Mesh:
    """A MuJoCo ``.msh`` file: int32 counts (vertices, normals, texcoords, faces), their data, the faces."""
    raw = path.read_bytes()
    if len(raw) < 16:
        raise ValueError(f"{path}: too short for a .msh header")
    nvertex, nnormal, ntexcoord, nface = (int(n) for n in np.frombuffer(raw[:16], np.int32))
    expected = 16 + 4 * (3 * nvertex + 3 * nnormal + 2 * ntexcoord + 3 * nface)
    if len(raw) != expected or min(nvertex, nnormal, ntexcoord, nface) < 0:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for the counts in its header")
    offset = 16
    positions = np.frombuffer(raw, np.float32, 3 * nvertex, offset).reshape(-1, 3)
    offset += 12 * (nvertex + nnormal)
    texcoords = np.frombuffer(raw, np.float32, 2 * ntexcoord, offset).reshape(-1, 2) if ntexcoord else None
    offset += 8 * ntexcoord
    faces = np.frombuffer(raw, np.int32, 3 * nface, offset).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= nvertex):
        raise ValueError(f"{path}: face indices outside 0..{nvertex - 1}")
    if texcoords is not None and len(texcoords) != nvertex:
        raise ValueError(f"{path}: {len(texcoords)} texture coordinates for {nvertex} vertices")
    return _weld(positions[faces.ravel()], None if texcoords is None else texcoords[faces.ravel()])


def write_msh(mesh: Mesh, path: Path) -> None:
    """Write ``mesh`` as a ``.msh`` file without normals (MuJoCo computes them)."""
    texcoords = mesh.texcoords if mesh.texcoords is not None else np.zeros((0, 2), np.float32)
    header = np.array([len(mesh.positions), 0, len(texcoords), len(mesh.faces)], np.int32)
    with path.open("wb") as handle:
        for array in (header, mesh.positions.astype(np.float32), texcoords.astype(np.float32)):
            handle.write(array.tobytes())
        handle.write(mesh.faces.astype(np.int32).tobytes())


def _obj_index(text: str, count: int) -> int:
    index = int(text)
    return index - 1 if index > 0 else count + index  # OBJ counts from 1; negative counts from the end


def read_obj(path: Path) -> Mesh:
    """A Wavefront ``.obj`` file's positions, texture coordinates and faces (polygons fanned out)."""
    positions: list[list[str]] = []
    texcoords: list[list[str]] = []
    corners: list[tuple[int, int]] = []
    for line in path.read_text(errors="replace").splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind == "v":
            positions.append(rest.split()[:3])
        elif kind == "vt":
            texcoords.append((rest.split() + ["0"])[:2])
        elif kind == "f":
            refs = []
            for ref in rest.split():
                parts = ref.split("/")
                texcoord = _obj_index(parts[1], len(texcoords)) if len(parts) > 1 and parts[1] else -1
                refs.append((_obj_index(parts[0], len(positions)), texcoord))
            for i in range(1, len(refs) - 1):
                corners += [refs[0], refs[i], refs[i + 1]]
    if not corners:
        raise ValueError(f"{path}: no faces")
    index = np.array(corners, np.int64)
    corner_positions = np.array(positions, np.float64)[index[:, 0]]
    with_texcoords = bool(texcoords) and (index[:, 1] >= 0).all()
    corner_texcoords = np.array(texcoords, np.float64)[index[:, 1]] if with_texcoords else None
    return _weld(corner_positions, corner_texcoords)


def write_obj(mesh: Mesh, path: Path) -> None:
    """Write ``mesh`` as a ``.obj`` file (positions, texture coordinates if any, 1-based faces)."""
    lines = [f"v {x:.8g} {y:.8g} {z:.8g}" for x, y, z in mesh.positions]
    if mesh.texcoords is not None:
        lines += [f"vt {u:.8g} {v:.8g}" for u, v in mesh.texcoords]
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in mesh.faces + 1]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in mesh.faces + 1]
    path.write_text("\n".join(lines) + "\n")


def decimate(mesh: Mesh, keep_fraction: float, textured: bool = True) -> Mesh:
    """``mesh`` with about ``keep_fraction`` of its triangles.

    Quadric edge collapse decides which vertices go (``fast_simplification.simplify``) and places each merged
    vertex where it best keeps the surface. A ``textured`` mesh needs texture coordinates, which those new
    points lack: its collapses are replayed on the original vertices instead (``replay_simplification``), so
    every surviving vertex stays where it was, with its texture coordinate. An untextured mesh drops them.
    """
    try:
        import fast_simplification
    except ImportError:
        raise ImportError(
            "the fast render profile needs fast-simplification: pip install 'vlamergebench[fast-render]'"
        ) from None

    points = mesh.positions.astype(np.float64)
    faces = mesh.faces.astype(np.int32)
    optimal, optimal_faces, collapses = fast_simplification.simplify(
        points, faces, target_reduction=1.0 - keep_fraction, return_collapses=True
    )
    if not textured or mesh.texcoords is None:
        return _compact(optimal.astype(np.float32), None, np.asarray(optimal_faces, np.int64).reshape(-1, 3))
    positions, new_faces, mapping = fast_simplification.replay_simplification(points, faces, collapses)
    origin = np.zeros(len(positions), np.int64)
    origin[mapping] = np.arange(len(mapping))  # any original vertex of each new one ...
    survivors = np.setdiff1d(np.arange(len(points)), collapses[:, 1] if len(collapses) else [])
    origin[mapping[survivors]] = survivors  # ... and the one that survived where there is one
    new_faces = np.asarray(new_faces, np.int64).reshape(-1, 3)
    return _compact(mesh.positions[origin], mesh.texcoords[origin], new_faces)


def _compact(positions: np.ndarray, texcoords: np.ndarray | None, faces: np.ndarray) -> Mesh:
    """Drop degenerate faces and the vertices no face uses."""
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    used, compact = np.unique(faces, return_inverse=True)
    return Mesh(positions[used], None if texcoords is None else texcoords[used], compact.reshape(-1, 3))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decimated_file(
    source: str | os.PathLike[str],
    keep_fraction: float | None = None,
    textured: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The cached decimated copy of mesh file ``source`` (made on first use); ``source`` itself if small.

    ``keep_fraction`` defaults to :data:`KEEP_FRACTION`; ``textured`` as :func:`decimate`. The copy's name
    holds the source's SHA-256, the kept fraction, the texture mode and :data:`ALGORITHM`, so a changed
    asset or algorithm gets a new copy and an existing one is never rewritten.
    """
    keep_fraction = KEEP_FRACTION if keep_fraction is None else keep_fraction
    source = Path(source)
    suffix = source.suffix.lower()
    if suffix not in _FORMATS:
        return source
    cache = Path(cache_dir) if cache_dir is not None else mesh_cache_dir()
    stat = source.stat()
    digest = _DIGESTS.get((str(source), stat.st_size, stat.st_mtime_ns))
    if digest is None:  # hashed once per process and file version: every env build asks again
        digest = _DIGESTS[(str(source), stat.st_size, stat.st_mtime_ns)] = _file_sha256(source)
    mode = "uv" if textured else "shape"
    name = f"{source.stem}-{digest[:20]}-keep{keep_fraction:g}-{mode}-{ALGORITHM}{suffix}"
    target = cache / name
    small = cache / (name + ".small")  # marks a source under MIN_FACES: nothing to decimate
    if target.exists():
        return target
    if small.exists():
        return source
    mesh = read_msh(source) if suffix == ".msh" else read_obj(source)
    cache.mkdir(parents=True, exist_ok=True)
    if len(mesh.faces) < MIN_FACES:
        small.touch()
        return source
    reduced = decimate(mesh, keep_fraction, textured)
    handle, temporary = tempfile.mkstemp(dir=cache, prefix=".part-", suffix=suffix)
    os.close(handle)
    try:
        (write_msh if suffix == ".msh" else write_obj)(reduced, Path(temporary))
        os.replace(temporary, target)  # atomic: a concurrent user sees the old state or the whole file
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def visual_only_meshes(model: Any) -> dict[str, bool]:
    """The meshes of compiled MuJoCo ``model`` no colliding geom uses (with ≥ MIN_FACES faces).

    Returns:
        Mesh name -> whether a geom using it has a textured material (its texture coordinates matter).
    """
    import mujoco

    mesh_geoms = [g for g in range(model.ngeom) if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH]
    colliding = {
        int(model.geom_dataid[g]) for g in mesh_geoms if model.geom_contype[g] or model.geom_conaffinity[g]
    }
    textured = {
        int(model.geom_dataid[g])
        for g in mesh_geoms
        if model.geom_matid[g] >= 0 and (np.asarray(model.mat_texid[model.geom_matid[g]]) >= 0).any()
    }
    return {
        mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_MESH, i): i in textured
        for i in range(model.nmesh)
        if i not in colliding and model.mesh_facenum[i] >= MIN_FACES
    }


def xml_processor(
    visual_meshes: Mapping[str, bool], keep_fraction: float | None = None
) -> Callable[[str], str]:
    """A robosuite XML processor pointing the named meshes' ``file`` at their decimated copies.

    ``visual_meshes`` as :func:`visual_only_meshes` returns; ``keep_fraction`` defaults to
    :data:`KEEP_FRACTION`.
    """
    meshes = dict(visual_meshes)

    def process(xml: str) -> str:
        root = ET.fromstring(xml)
        for mesh in root.iter("mesh"):
            file = mesh.get("file")
            name = mesh.get("name", Path(file or "").stem)
            if file and name in meshes and Path(file).is_absolute():
                mesh.set("file", str(decimated_file(file, keep_fraction, meshes[name])))
        return ET.tostring(root, encoding="unicode")

    return process
