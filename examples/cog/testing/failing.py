"""A Cog predictor for reelay's tests that always fails, as a model out of GPU memory does.

It takes the inputs of ../predict.py (so ../.cog/openapi_schema.json fits it too), logs one line,
and raises RuntimeError("the model ran out of GPU memory"); coglet then answers status "failed"
with error "Prediction failed: Prediction failed: RuntimeError: the model ran out of GPU memory".

  cd examples/cog && PORT=5000 COG_PREDICT_TYPE_STUB=testing/failing.py:Predictor \
      python -m cog.server.http --host 127.0.0.1
"""

from typing import Optional

from cog import BaseRunner, Input, Path


class Predictor(BaseRunner):
    def run(
        self,
        prompt: str = Input(description="What the video shows"),
        seed: int = Input(description="Random seed", default=0),
        aspect_ratio: str = Input(description="Frame shape", default="16:9", choices=["16:9", "9:16"]),
        image: Optional[Path] = Input(description="First frame (optional)", default=None),
        end_image: Optional[Path] = Input(description="Last frame (optional)", default=None),
        watermark_text: Optional[str] = Input(description="Watermark (optional)", default=None),
    ) -> Path:
        print("loading weights onto the GPU", flush=True)
        raise RuntimeError("the model ran out of GPU memory")
