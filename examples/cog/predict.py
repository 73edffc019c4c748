"""A stand-in text/image-to-video model for reelay's Cog worker (`reelay worker --cog URL`).

It has the shape of a Replicate video model (prompt, seed, aspect ratio, optional first and last
frame, optional watermark; one MP4 file out) but renders on the CPU in well under a second: a
seeded colour gradient that moves, 2 s at 24 fps, 320x180 (16:9) or 180x320 (9:16), encoded as
H.264 (libx264, yuv420p, +faststart) by the ffmpeg that the imageio-ffmpeg wheel ships. The same
prompt and seed give the same frames.

  * `image`: the first frame (scaled to cover, centre-cropped); the video fades from it.
  * `end_image`: the last frame; the video fades into it.
  * `watermark_text`: drawn in the bottom-right corner of every frame.

Progress goes to stdout as tqdm-style lines (" 50%|█████     | 24/48 [00:00<00:00, 80.00it/s]"),
which coglet returns in the prediction's `logs` and which the Replicate clients parse with
`^\\s*(\\d+)%\\s*\\|.+?\\|\\s*(\\d+)/(\\d+)`.

Run it with the real Cog server: see README.md beside this file.
"""

import hashlib
import tempfile
import time
from typing import Optional

import imageio.v2 as imageio
import numpy as np
from cog import BaseRunner, Input, Path
from PIL import Image, ImageDraw, ImageFont, ImageOps

FPS = 24
SECONDS = 2
SIZES = {"16:9": (320, 180), "9:16": (180, 320)}  # (width, height)


class Predictor(BaseRunner):
    # Cog 0.23 names the entry point run() (BasePredictor/predict() still work but log a
    # deprecation warning); cog.yaml's `predict: "predict.py:Predictor"` points here either way.
    def setup(self) -> None:
        # A real model loads its weights here. Warm the font so the first prediction is not slower.
        self.font = ImageFont.load_default(size=14)
        # One output file, overwritten by each prediction: coglet has read (or uploaded) the last
        # one before it starts the next, so outputs do not pile up in /tmp.
        self.out = Path(tempfile.mkdtemp(prefix="reelay-cog-")) / "output.mp4"

    def run(
        self,
        prompt: str = Input(description="What the video shows"),
        seed: int = Input(description="Random seed; same prompt and seed, same video", default=0),
        aspect_ratio: str = Input(
            description="Frame shape", default="16:9", choices=["16:9", "9:16"]
        ),
        image: Optional[Path] = Input(description="First frame (optional)", default=None),
        end_image: Optional[Path] = Input(description="Last frame (optional)", default=None),
        watermark_text: Optional[str] = Input(
            description="Text drawn in a corner of every frame (optional)", default=None
        ),
    ) -> Path:
        width, height = SIZES[aspect_ratio]
        frames = FPS * SECONDS
        start = load_frame(image, width, height) if image else None
        end = load_frame(end_image, width, height) if end_image else None
        mark = watermark_mask(watermark_text, width, height, self.font) if watermark_text else None
        animate = gradient_animation(prompt, seed, width, height)

        out = self.out
        print(f"rendering {frames} frames at {width}x{height}, seed {seed}", flush=True)
        began = time.monotonic()
        writer = imageio.get_writer(
            str(out),
            format="FFMPEG",
            fps=FPS,
            codec="libx264",
            pixelformat="yuv420p",
            quality=None,
            macro_block_size=2,  # 180 is not a multiple of 16; yuv420p needs even sizes only
            ffmpeg_log_level="error",
            output_params=["-crf", "23", "-preset", "veryfast", "-movflags", "+faststart"],
        )
        try:
            for i in range(frames):
                t = i / (frames - 1)
                frame = animate(t)
                if start is not None and end is not None:
                    frame = (1 - t) * start + t * end
                elif start is not None:
                    frame = (1 - t) * start + t * frame
                elif end is not None:
                    frame = (1 - t) * frame + t * end
                if mark is not None:
                    frame = frame * (1 - mark) + 255.0 * mark
                writer.append_data(np.clip(frame, 0, 255).astype(np.uint8))
                if (i + 1) % 4 == 0 or i + 1 == frames:
                    print(progress_line(i + 1, frames, time.monotonic() - began), flush=True)
        finally:
            writer.close()
        print(f"wrote {out.stat().st_size} bytes", flush=True)
        return out


def gradient_animation(prompt: str, seed: int, width: int, height: int):
    """A function of t in [0, 1] giving a float (height, width, 3) frame, fixed by prompt and seed."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    colours = rng.uniform(20, 235, size=(3, 3))  # two gradient ends and a moving blob
    angle = rng.uniform(0, 2 * np.pi)
    bands = rng.uniform(0.5, 2.0)
    path = rng.uniform(0.2, 0.8, size=(2, 2))  # blob moves from path[0] to path[1] (fractions)

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    along = (x * np.cos(angle) + y * np.sin(angle)) / max(width, height)
    radius = 0.25 * min(width, height)

    def frame(t: float) -> np.ndarray:
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (bands * along - t))[..., None]
        img = colours[0] * (1 - s) + colours[1] * s
        cx, cy = (path[0] + t * (path[1] - path[0])) * (width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        return img * (1 - blob) + colours[2] * blob

    return frame


def load_frame(path: Path, width: int, height: int) -> np.ndarray:
    """An image file scaled to cover width x height and centre-cropped, as a float RGB array."""
    with Image.open(path) as img:
        fitted = ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (width, height))
    return np.asarray(fitted, dtype=np.float64)


def watermark_mask(text: str, width: int, height: int, font) -> np.ndarray:
    """Opacity (height, width, 1) in [0, 1] of `text` drawn in the bottom-right corner."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((width - 6 - right, height - 6 - bottom), text, font=font, fill=200)
    return np.asarray(mask, dtype=np.float64)[..., None] / 255.0


def progress_line(done: int, total: int, elapsed: float) -> str:
    """A tqdm-style progress line, e.g. ' 50%|█████     | 24/48 [00:01<00:01, 24.00it/s]'."""
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = (total - done) / rate if rate > 0 else 0.0
    filled = done * 10 // total
    bar = "█" * filled + " " * (10 - filled)
    return (
        f"{done * 100 // total:3d}%|{bar}| {done}/{total} "
        f"[{clock(elapsed)}<{clock(remaining)}, {rate:.2f}it/s]"
    )


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"
