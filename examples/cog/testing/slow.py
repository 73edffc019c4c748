"""A slow Cog predictor for reelay's tests: progress for a while, then the example video.

It takes the inputs of ../predict.py (so ../.cog/openapi_schema.json fits it too), sleeps in
0.1 s steps for $COG_TEST_SLOW_SECONDS seconds (default 60), printing a tqdm-style progress line
each second, then renders the same MP4 as ../predict.py. If the prediction is cancelled while it
sleeps, it writes the word "cancelled" to the file named by $COG_TEST_CANCEL_MARKER (when set)
and re-raises. (coglet cancels a sync predictor by raising cog.CancelationException, a
BaseException, in its thread; the 0.1 s steps let that happen within 0.1 s.)

  cd examples/cog && PORT=5000 COG_TEST_SLOW_SECONDS=30 COG_PREDICT_TYPE_STUB=testing/slow.py:Predictor \
      python -m cog.server.http --host 127.0.0.1
"""

import os
import sys
import time
from typing import Optional

from cog import CancelationException, Input, Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import predict  # noqa: E402  (../predict.py, the real example model)


class Predictor(predict.Predictor):
    def run(
        self,
        prompt: str = Input(description="What the video shows"),
        seed: int = Input(description="Random seed", default=0),
        aspect_ratio: str = Input(description="Frame shape", default="16:9", choices=["16:9", "9:16"]),
        image: Optional[Path] = Input(description="First frame (optional)", default=None),
        end_image: Optional[Path] = Input(description="Last frame (optional)", default=None),
        watermark_text: Optional[str] = Input(description="Watermark (optional)", default=None),
    ) -> Path:
        seconds = float(os.environ.get("COG_TEST_SLOW_SECONDS", "60"))
        steps = max(1, round(seconds * 10))
        began = time.monotonic()
        print(f"sleeping {seconds:g} s", flush=True)
        try:
            for step in range(1, steps + 1):
                time.sleep(0.1)
                if step % 10 == 0 or step == steps:
                    elapsed = time.monotonic() - began
                    print(predict.progress_line(step, steps, elapsed), flush=True)
        except CancelationException:
            marker = os.environ.get("COG_TEST_CANCEL_MARKER")
            if marker:
                with open(marker, "w") as f:
                    f.write("cancelled")
            print("cancelled", flush=True)
            raise
        return super().run(
            prompt=prompt,
            seed=seed,
            aspect_ratio=aspect_ratio,
            image=image,
            end_image=end_image,
            watermark_text=watermark_text,
        )
