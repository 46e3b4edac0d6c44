"""The JSON of one answer (``POST /v1/infer``, and ``response.json`` in the UI's downloads), and of
an error. The pydantic models are what FastAPI writes into ``/openapi.json``."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from omniplug.infer.render import box_parts, jsonable, mask_image
from omniplug.types import Response


class MaskOut(BaseModel):
    label: str | None = Field(description="what the answer named this mask, when it did ('the red circle: <seg>')")
    score: float = Field(description="the decoder's confidence")
    area: int = Field(description="pixels inside the mask")
    width: int
    height: int
    png: str = Field(description="base64 PNG, 8-bit greyscale: 255 inside the mask, 0 outside; the size of the first image")


class BoxOut(BaseModel):
    box: list[float] = Field(description="(x0, y0, x1, y1) in pixels of the first image")
    label: str | None = Field(description="the detector's class name")
    score: float = Field(description="the detector's confidence")


class ImageOut(BaseModel):
    width: int
    height: int
    png: str = Field(description="base64 PNG of a generated image")


class VideoOut(BaseModel):
    frames: int
    width: int
    height: int
    gif: str = Field(description="base64 animated GIF of a generated clip")


class InferResponse(BaseModel):
    text: str = Field(description="the answer; [mask 1], [image 1], ... stand where each output was produced")
    masks: list[MaskOut] = []
    images: list[ImageOut] = []
    videos: list[VideoOut] = []
    boxes: list[BoxOut] = []
    actions: list[Any] = []
    extra: dict[str, list[Any]] = Field(default_factory=dict, description="outputs of decoders of other kinds")
    timings: dict[str, float] = Field(default_factory=dict,
                                      description="seconds per stage: queue, preprocess, generate, postprocess, total")


class InferManyResponse(BaseModel):
    answers: list[InferResponse] = Field(description="one answer per prompt, in the order the prompts were sent")


class RolloutRequest(BaseModel):
    model_config = {"extra": "forbid"}
    mission: str = Field(description="what the agent should do, as the environment says it, e.g. 'keep to the "
                                     "right lane' or 'go to the red ball'")
    episodes: int = Field(1, description="episodes to play side by side (1 to the server's --max-rollout-episodes)")
    seed: int = Field(100_000, description="the first seed tried: the episodes are the first seeds from here on "
                                           "whose mission is the one asked")


class RolloutResponse(BaseModel):
    mission: str
    env: str
    seeds: list[int] = Field(description="the episodes' seeds (omniplug eval --env ENV --mission ... replays them)")
    summary: dict[str, Any] = Field(description="success rate, mean return and length, the environment's measures "
                                                "(driving: crashed, mean speed, ...)")
    episodes: list[dict[str, Any]] = Field(description="per episode: seed, success, total_return, length, metrics")
    gif: str = Field(description="base64 animated GIF: the episodes side by side, a green frame marks a success, red "
                                 "a failure")


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. invalid_image, queue_full")
    message: str = Field(description="what went wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorBody


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def gif_base64(frames: list[Image.Image], *, ms_per_frame: int = 125) -> str:
    buf = io.BytesIO()
    frames = [f.convert("RGB") for f in frames]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def to_payload(response: Response) -> InferResponse:
    masks = []
    for m in response.masks:
        pixels = np.asarray(m.mask, dtype=bool)
        masks.append(MaskOut(label=m.label, score=float(m.score), area=int(pixels.sum()), width=int(pixels.shape[1]),
                             height=int(pixels.shape[0]), png=png_base64(mask_image(m))))
    images = [ImageOut(width=im.width, height=im.height, png=png_base64(im)) for im in response.images]
    videos = [VideoOut(frames=len(clip), width=clip[0].width, height=clip[0].height, gif=gif_base64(clip))
              for clip in response.videos]
    boxes = []
    for b in response.boxes:
        xyxy, label, score = box_parts(b)
        boxes.append(BoxOut(box=[round(v, 2) for v in xyxy], label=label, score=1.0 if score is None else round(score, 4)))
    return InferResponse(text=response.text, masks=masks, images=images, videos=videos, boxes=boxes,
                         actions=jsonable(response.actions), extra=jsonable(response.extra),
                         timings={k: round(float(v), 6) for k, v in response.timings.items()})
