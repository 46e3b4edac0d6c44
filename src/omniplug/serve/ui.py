"""The Gradio Blocks UI: a chat with image upload, example requests, the masks drawn on the image,
generated images, downloads (mask PNGs, overlay, ``response.json``), per-stage timings and a status
line that shows every error. Each message goes through :meth:`Service.answer`, like the API."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from omniplug.data.conversation import Turn
from omniplug.infer.render import draw_boxes, labelled_overlay, mask_image, overlay, save_clip
from omniplug.types import Response

from .errors import RequestError
from .examples import Example
from .payload import to_payload
from .rollouts import example_missions
from .service import Service
from .settings import ServeSettings
from .uploads import InferOptions, Upload, decode_images

HINT = ("Upload an image (PNG, JPEG, WEBP, GIF, BMP) and ask, e.g. *Please segment the red circle.*; "
        "masks appear on the right. **Clear** starts a new conversation.")
ROLLOUT_HINT = ("Type a mission (or pick one) and press **Roll out**: the agent plays it in `{env}`, the episodes "
                "side by side (a green frame marks a success, red a failure). The episodes are the first seeds from "
                "*first seed* on whose mission it is; `omniplug eval --env {env} --mission ...` replays them.")


@dataclass
class Conversation:
    """What the model has seen in this browser session (server-side ``gr.State``)."""

    turns: list[Turn] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # what the chat shows (never read back from the browser)


class OutputFiles:
    """A folder per answer for its downloads; the oldest folders go once ``keep`` are there."""

    def __init__(self, *, keep: int = 64) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="omniplug-ui-"))
        atexit.register(shutil.rmtree, self.root, True)
        self.keep = keep
        self._dirs: deque[Path] = deque()
        self._lock = threading.Lock()

    def new_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._dirs.append(path)
            while len(self._dirs) > self.keep:
                shutil.rmtree(self._dirs.popleft(), ignore_errors=True)
        return path

    def write(self, response: Response, image: Image.Image | None) -> list[str]:
        out = self.new_dir()
        paths = []
        for i, m in enumerate(response.masks, start=1):
            paths.append(out / f"mask_{i}.png")
            mask_image(m).save(paths[-1])
        if response.masks and image is not None:
            paths.append(out / "overlay.png")
            overlay(image, response.masks).save(paths[-1])
        if response.boxes and image is not None:
            paths.append(out / "boxes.png")
            draw_boxes(image, response.boxes).save(paths[-1])
        for i, generated in enumerate(response.images, start=1):
            paths.append(out / f"image_{i}.png")
            generated.save(paths[-1])
        for i, frames in enumerate(response.videos, start=1):  # a GIF plays in the gallery; the sheet shows every frame
            saved = save_clip(frames, out / f"clip_{i}")
            paths += [Path(saved["gif"]), Path(saved["sheet"])] + ([Path(saved["mp4"])] if saved["mp4"] else [])
        paths.append(out / "response.json")
        paths[-1].write_text(to_payload(response).model_dump_json(indent=2))
        return [str(p) for p in paths]


def shown_outputs(image: Image.Image | None, response: Response) -> Image.Image | None:
    """What the answer found on the first image: its masks (numbered and labelled), its boxes drawn over them."""
    if image is None or not (response.masks or response.boxes):
        return None
    if not response.boxes:
        return labelled_overlay(image, response.masks)
    return draw_boxes(overlay(image, response.masks) if response.masks else image, response.boxes)


def _whole(value):
    """A UI number as an int when it is a whole one (sliders and number boxes send floats); anything else as it
    came, for the rollout's own check to refuse with its message (an emptied box sends None)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _read_upload(path: str) -> Upload:
    """An upload Gradio stored in its own folder; any other path is refused (never a client's path)."""
    folder = Path(gr.utils.get_upload_folder()).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(folder) or not resolved.is_file():
        raise RequestError(400, "image_not_a_file", "images must be uploaded; the server opens no other path")
    return Upload(data=resolved.read_bytes())


def build_ui(service: Service, settings: ServeSettings, examples: list[Example]) -> gr.Blocks:
    files = OutputFiles()

    def respond(message, conv: Conversation, max_new_tokens, do_sample, temperature, top_p):
        message = message or {"text": "", "files": []}
        text = message.get("text") or ""
        paths = [p if isinstance(p, str) else p["path"] for p in message.get("files") or []]
        try:
            uploads = [_read_upload(p) for p in paths]
            images = decode_images(uploads, settings, already=len(conv.images))
            options = InferOptions(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample),
                                   temperature=float(temperature), top_p=float(top_p))
            response = service.answer(conv.images + images, text, options, history=conv.turns)
        except RequestError as exc:  # the message stays in the box so that it can be fixed
            return (gr.update(), conv.messages, conv, gr.update(), gr.update(), gr.update(), gr.update(),
                    f"**Error** ({exc.code}): {exc.message}")
        all_images = conv.images + images
        shown_turn = [{"role": "user", "content": {"path": p}} for p in paths] + [
            {"role": "user", "content": text}, {"role": "assistant", "content": response.text}]
        conv = Conversation(turns=conv.turns + [Turn(role="user", text=text, images=len(images)),
                                                Turn(role="assistant", text=response.text)],
                            images=all_images, messages=conv.messages + shown_turn)
        first = all_images[0] if all_images else None
        shown = shown_outputs(first, response)
        timings = {k: round(v, 4) for k, v in response.timings.items()}
        outputs = [f"{len(response.masks)} mask(s)", f"{len(response.boxes)} box(es)", f"{len(response.images)} image(s)"]
        outputs += [f"{len(response.videos)} clip(s)"] if response.videos else []
        downloads = files.write(response, first)
        gallery = list(response.images) + [p for p in downloads if p.endswith(".gif")]
        status = f"Answered in {timings.get('total', 0.0):.2f} s: " + ", ".join(outputs) + "."
        return (gr.update(value=None), conv.messages, conv, shown, gallery, downloads,
                timings, status)

    def clear():
        return None, [], Conversation(), None, [], None, None, "Cleared."

    def roll(mission, episodes, seed):
        try:
            done = service.rollouts.run(mission, _whole(episodes), _whole(seed), files.new_dir())
        except RequestError as exc:  # the mission stays in the box so that it can be fixed
            return None, None, f"**Error** ({exc.code}): {exc.message}"
        s = done.summary
        measures = {k: v for k, v in s.items() if k.startswith(("crashed", "mean_speed", "success_")) and k != "success_rate"}
        extra = "".join(f", {k.replace('_', ' ')} {v:.2f}" for k, v in measures.items())
        status = (f"{len(done.seeds)} episode(s) of *{done.mission}* (seeds {', '.join(map(str, done.seeds))}) in "
                  f"{s['seconds']:.1f} s: success {s['success_rate']:.2f}, mean length {s['mean_length']:.1f} "
                  f"steps{extra}.")
        return str(done.gif), {"summary": s, "episodes": done.episodes}, status

    def readiness():
        r = service.readiness
        return {"ready": f"Model ready: `{service.config}`", "loading": "The model is loading...",
                "failed": f"**Error**: {r.message}"}[r.state]

    first = next((e for e in examples if e.image), None)
    missions = example_missions(settings)
    with gr.Blocks(title=settings.title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {settings.title}\n{HINT}")
        conv = gr.State(Conversation())
        tabs = gr.Tabs() if settings.env else nullcontext()
        with tabs, (gr.Tab("Chat") if settings.env else nullcontext()), gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=380, elem_id="chat")
                box = gr.MultimodalTextbox(
                    value={"text": first.prompt, "files": [first.image]} if first else None,
                    file_types=["image"], file_count="multiple", sources=["upload"], elem_id="prompt",
                    placeholder="Upload an image and ask a question", label="Your message", show_label=False)
                with gr.Accordion("Options", open=False):
                    max_new = gr.Slider(1, settings.max_new_tokens, value=settings.default_new_tokens, step=1,
                                        label="max new tokens")
                    do_sample = gr.Checkbox(False, label="sample (off: greedy, the same answer every time)")
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="temperature (sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top p (sampling)")
                clear_btn = gr.Button("Clear", variant="secondary")
                if examples:
                    gr.Examples(examples=[[{"text": e.prompt, "files": [e.image] if e.image else []}] for e in examples],
                                inputs=[box], label="Examples: click one, then press Enter", examples_per_page=8)
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                shown = gr.Image(label="Masks and boxes on the image", format="png", type="pil", interactive=False,
                                 elem_id="overlay", height=320)
                generated = gr.Gallery(label="Generated images", format="png", columns=3, elem_id="generated",
                                       height=180)
                downloads = gr.File(label="Downloads: masks, overlay, boxes, response.json", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                timings = gr.JSON(label="Timings (seconds)", elem_id="timings")
        if settings.env:
            with tabs, gr.Tab("Rollout", elem_id="rollout-tab"):
                gr.Markdown(ROLLOUT_HINT.format(env=settings.env))
                with gr.Row():
                    with gr.Column(scale=2):
                        mission = gr.Dropdown(choices=missions, value=missions[0] if missions else None,
                                              allow_custom_value=True, label="Mission", elem_id="mission")
                        episodes = gr.Slider(1, settings.max_rollout_episodes, value=min(2, settings.max_rollout_episodes),
                                             step=1, label="episodes")
                        first_seed = gr.Number(100_000, precision=0, minimum=0, label="first seed")
                        roll_btn = gr.Button("Roll out", variant="primary", elem_id="roll")
                        roll_status = gr.Markdown(elem_id="rollout-status")
                    with gr.Column(scale=3):
                        rollout_gif = gr.Image(label="Rollouts", type="filepath", interactive=False,
                                               elem_id="rollout-gif", height=360)
                        rollout_json = gr.JSON(label="Figures", elem_id="rollout-figures")
            roll_btn.click(roll, [mission, episodes, first_seed], [rollout_gif, rollout_json, roll_status],
                           api_name="rollout", concurrency_limit=None)
        outputs = [box, chat, conv, shown, generated, downloads, timings, status]
        box.submit(respond, [box, conv, max_new, do_sample, temperature, top_p], outputs, api_name="chat",
                   concurrency_limit=None)
        clear_btn.click(clear, None, outputs, api_name="clear", concurrency_limit=None)
        demo.load(readiness, None, status, api_visibility="private")
    demo.queue(default_concurrency_limit=None)
    return demo

