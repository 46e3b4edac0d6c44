"""``omniplug serve -c CONFIG [overrides]``: the web UI and HTTP API on one server.
``omniplug demo``: the same for the bundled default model, opening on example images of its world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omniplug.cli import command

#: the bundled default model, in a source checkout (src layout: <repo>/src/omniplug/commands/serve.py)
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "default" / "omni_tiny.yaml"


def _server_args(p: argparse.ArgumentParser) -> None:
    from omniplug.serve.settings import AUTH_ENV, ServeSettings

    d = ServeSettings()
    p.add_argument("--host", default=d.host,
                   help=f"address to listen on (default {d.host}: this machine only; any other needs --auth)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 picks a free one)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require HTTP Basic auth on the UI and the API (default: ${AUTH_ENV} if set)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="request size limit (all images)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="pixel limit per image")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request / conversation")
    p.add_argument("--clip-frames", type=int, default=d.clip_frames,
                   help="frames read (evenly spaced) from an uploaded clip (animated GIF/WebP/PNG)")
    p.add_argument("--max-clip-frames", type=int, default=d.max_clip_frames, help="longest clip accepted, in frames")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="largest answer length a request may ask")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help="requests answered at once: the rows of the running batch (continuous batching)")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="requests waiting; beyond that 429")
    p.add_argument("--prefix-cache-mb", type=float, default=d.prefix_cache_mb,
                   help="keys/values of earlier prompts kept for a conversation's next turn (0: off; a 7B LLaVA "
                        "needs ~300 MB per image prompt)")
    p.add_argument("--examples", choices=("auto", "world", "none"), default=d.examples,
                   help="example gallery: world images (auto: when the model was trained on the world)")
    p.add_argument("--env", nargs="?", const="", default=None, metavar="ENV",
                   help="the served agent plays missions in an environment: the UI's Rollout tab and POST /v1/rollout; "
                        "alone, the one its config records (env.name, env.options), e.g. with "
                        "configs/driving/highway.yaml")
    p.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --env (repeatable), on top of the config's env.options, as omniplug eval takes it")
    p.add_argument("--max-rollout-episodes", type=int, default=d.max_rollout_episodes,
                   help="episodes one rollout request may ask for")
    p.add_argument("--device", default=None, help="e.g. cuda (default: CPU)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file (one_model.weights picks trained weights)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. one_model.weights=output/run1/final")
    _server_args(p)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    _server_args(p)
    p.set_defaults(examples="world")


def _settings(args: argparse.Namespace):
    from omniplug.serve.settings import ServeSettings, auth_from_env

    env, env_option = args.env, tuple(args.env_option)
    if env is not None:  # the agent's environment: its config's env section under the command line's options
        from omniplug.config import load_config
        from omniplug.envs.base import env_for, parse_options

        env, options = env_for(load_config(args.config, args.overrides), env, parse_options(list(env_option)))
        env_option = tuple(f"{key}={json.dumps(value)}" for key, value in options.items())
    return ServeSettings(host=args.host, port=args.port, auth=auth_from_env(args.auth), max_upload_mb=args.max_upload_mb,
                         max_pixels=args.max_pixels, max_images=args.max_images, max_new_tokens=args.max_new_tokens,
                         clip_frames=args.clip_frames, max_clip_frames=args.max_clip_frames,
                         default_new_tokens=min(64, args.max_new_tokens), concurrency=args.concurrency,
                         queue_size=args.queue_size, examples=args.examples, prefix_cache_mb=args.prefix_cache_mb,
                         env=env, env_option=env_option,
                         max_rollout_episodes=args.max_rollout_episodes)


@command("serve", "web UI and HTTP API (POST /v1/infer) for a model, on 127.0.0.1 unless told otherwise")(_serve_args)
def _serve(args: argparse.Namespace) -> int:
    from omniplug.serve.app import serve

    return serve(args.config, args.overrides, _settings(args), device=args.device)


@command("demo", "serve the bundled default model (configs/default/omni_tiny.yaml) with example images")(_demo_args)
def _demo(args: argparse.Namespace) -> int:
    from omniplug.serve.app import serve

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"the default model's config is not at {args.config}; run from a source checkout "
                                "of omniplug, or use 'omniplug serve -c CONFIG'")
    return serve(args.config, args.overrides, _settings(args), device=args.device)
