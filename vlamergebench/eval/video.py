"""Rollout videos (``run --record-videos N``): the frames the policy already reads, saved as MP4 files.

Frames: one per observation the policy reads, that is the reset observation and the observation after each
action chunk, the episode's last observation included. With chunked execution the cameras render only for
those observations, and rendering dominates a rollout's cost, so no frame is rendered for the video alone:
a video has ``1 + chunks`` frames, one per chunk (a policy executing chunks of 8 steps gives one frame per 8
steps). Every camera of the observation (each ``uint8 (H, W, 3)`` entry, in key order; LIBERO:
``agentview_image`` then ``wrist_image``) is shown side by side at the resolution the policy reads
(``--image-size``, default the policy's input size): two 128 px cameras make a 256 x 128 video. Playback is
:data:`VIDEO_FPS` frames per second.

Encoding: H.264 in an MP4 (``libx264``, ``yuv420p``, which browsers play) through imageio's ffmpeg plugin,
whose ``imageio-ffmpeg`` package brings its own ffmpeg binary (``pip install 'vlamergebench[video]'``). The
worker that ran the episode encodes it and hands the bytes to the runner with the episode's record; the
runner writes the file and the store's ``videos`` row (:class:`~vlamergebench.eval.store.VideoRecord`, with a
JPEG poster of the last frame) so whichever executor ran the episode, only the process owning the output
directory writes there. A file's path is a function of the episode's key, so a resumed run overwrites a
video whose row was never committed instead of adding a second one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlamergebench.eval.store import VideoRecord
from vlamergebench.provenance import canonical_json

VIDEO_FPS = 10.0
VIDEO_DIR = "videos"
POSTER_HEIGHT = 128  # the poster (a thumbnail kept in the store) is scaled down to at most this many rows
INSTALL_HINT = "pip install 'vlamergebench[video]' (imageio and imageio-ffmpeg)"


@dataclass(frozen=True)
class EncodedVideo:
    """One episode's video, encoded in the worker.

    Attributes:
        mp4: The MP4 file's bytes.
        poster_jpeg: A JPEG of the last frame, at most :data:`POSTER_HEIGHT` rows.
        frames: Frames in the video.
        fps: Playback frame rate.
        width: Frame width in pixels.
        height: Frame height in pixels.
        cameras: The observation keys shown, left to right, comma-separated.
    """

    mp4: bytes
    poster_jpeg: bytes
    frames: int
    fps: float
    width: int
    height: int
    cameras: str


def require_video_support() -> None:
    """Raise ``ValueError`` with the install command when imageio or its ffmpeg plugin is missing."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise ValueError(
            f"--record-videos needs imageio with its ffmpeg plugin ({error}): {INSTALL_HINT}"
        ) from None


def camera_keys(observation: Mapping[str, Any]) -> list[str]:
    """The observation's camera entries: ``uint8 (H, W, 3)`` arrays, in key order."""
    return sorted(
        key
        for key, value in observation.items()
        if isinstance(value, np.ndarray)
        and value.dtype == np.uint8
        and value.ndim == 3
        and value.shape[2] == 3
    )


class FrameRecorder:
    """Collects one frame per observation the policy reads (cameras side by side)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.cameras: list[str] = []

    def add(self, observation: Mapping[str, Any]) -> None:
        """Keep a copy of ``observation``'s cameras (an env may reuse its image buffers)."""
        if not self.frames:
            self.cameras = camera_keys(observation)
            if not self.cameras:
                raise ValueError(
                    f"--record-videos: the observation has no uint8 (H, W, 3) camera entry (keys "
                    f"{sorted(observation)}); see docs/formats.md section 1"
                )
        self.frames.append(np.concatenate([np.asarray(observation[key]) for key in self.cameras], axis=1))

    def encode(self, fps: float = VIDEO_FPS) -> EncodedVideo:
        """The recorded frames as an :class:`EncodedVideo`."""
        if not self.frames:
            raise ValueError("FrameRecorder.encode: no frames were recorded")
        # yuv420p halves the chroma resolution: H.264 needs even sides (an odd one gets a black line)
        height, width = self.frames[0].shape[:2]
        padded = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0))) for f in self.frames]
        return EncodedVideo(
            mp4=encode_mp4(padded, fps),
            poster_jpeg=poster_jpeg(self.frames[-1]),
            frames=len(padded),
            fps=float(fps),
            width=int(padded[0].shape[1]),
            height=int(padded[0].shape[0]),
            cameras=",".join(self.cameras),
        )


def encode_mp4(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """H.264 MP4 bytes of ``frames`` (uint8 RGB, even sides) through imageio's ffmpeg plugin."""
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory(prefix="video-") as scratch:
        path = Path(scratch) / "episode.mp4"
        iio.imwrite(
            path,
            np.stack(frames),
            plugin="FFMPEG",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=2,  # the sides are already even: never rescale
            ffmpeg_log_level="error",
            output_params=["-threads", "1"],  # one of the worker's share of cores
        )
        return path.read_bytes()


def poster_jpeg(frame: np.ndarray) -> bytes:
    """A JPEG (quality 85) of ``frame``, scaled down to at most :data:`POSTER_HEIGHT` rows."""
    import cv2

    height, width = frame.shape[:2]
    if height > POSTER_HEIGHT:
        size = (max(1, round(width * POSTER_HEIGHT / height)), POSTER_HEIGHT)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} poster as JPEG")
    return data.tobytes()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text) or "_"


def video_path(key: Sequence[Any]) -> str:
    """Where episode ``key``'s video lives, relative to the store's directory (a function of the key only).

    ``videos/<run>/<skill>/step<t>-<task>-<variant or clean>-ep<k>-<8 hex of the key>.mp4``; the hash keeps
    two keys apart that differ only in characters a file name cannot hold.
    """
    run_id, step, skill, _env_id, variant, task, k = key
    digest = hashlib.sha256(canonical_json(list(key)).encode()).hexdigest()[:8]
    name = f"step{int(step):02d}-{_safe(task)}-{_safe(variant or 'clean')}-ep{int(k):03d}-{digest}.mp4"
    return f"{VIDEO_DIR}/{_safe(run_id)}/{_safe(skill)}/{name}"


def save_video(store_dir: str | os.PathLike[str], key: Sequence[Any], video: EncodedVideo) -> VideoRecord:
    """Write ``video`` under ``store_dir`` (atomically: a killed run leaves no half file) and describe it."""
    relative = video_path(key)
    target = Path(store_dir) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(video.mp4)
    os.replace(partial, target)
    return VideoRecord(
        key=tuple(key),
        path=relative,
        frames=video.frames,
        fps=video.fps,
        width=video.width,
        height=video.height,
        cameras=video.cameras,
        bytes=len(video.mp4),
        sha256=hashlib.sha256(video.mp4).hexdigest(),
        poster_jpeg=video.poster_jpeg,
    )
