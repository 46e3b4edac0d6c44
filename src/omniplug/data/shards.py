"""Dataset ``llava_shards``: LLaVA conversations in WebDataset tar shards, for data that does not fit in memory.

Layout (WebDataset's: one tar per shard, a sample's members share a key), plus the shard index that
webdataset's indexed reader (``wids``) reads::

    shards/index.json            {"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples"}, ...]}
    shards/shard-000000.tar      000000.json  000000.png  000001.json  000001.0.png  000001.1.png  ...

``KEY.json`` is one LLaVA record (``{"id", "conversations": [{"from", "value"}, ...]}``, as ``llava_json``
reads); the sample's images are its members ending in ``.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``, in name
order, placed by the record's ``<image>`` markers as in ``llava_json``.

Reading is by index, not by stream: ``wids.ShardListDataset`` maps sample ``i`` to its shard and offset, keeps
a few shards open (an LRU) and decodes one sample at a time. Memory holds the index, not the data. So the
training loop's mixture, ``num_workers > 0`` and exact resume mid-epoch work as for any map-style dataset
(the loop draws ``(dataset, index)`` keys; a resumed run draws the same keys). Local shard files are read in
place; remote URLs in the index are downloaded once into ``cache_dir``.

``write_llava_shards`` turns a ``llava_json`` file (+ its image folder) into shards and the index.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from omniplug.data.images import read_image
from omniplug.data.llava_json import LlavaJsonDataset
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
INDEX_KIND = "wids-shard-index-v1"


@DATASETS.register("llava_shards")
class LlavaShardsDataset(LlavaJsonDataset):
    kind = "llava_shards"

    def __init__(self, *, index: str, max_samples: int | None = None, shuffle_turns: bool = False, seed: int = 0,
                 cache_dir: str | None = None, name: str = "llava_shards") -> None:
        try:
            import wids
        except ImportError:
            raise ImportError("dataset llava_shards reads WebDataset shards with webdataset's wids: "
                              "pip install 'omniplug[data]' (webdataset)") from None

        path = Path(index).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"dataset llava_shards: index {path} not found (write one with "
                                    f"omniplug.data.shards.write_llava_shards, or see docs/datasets.md)")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"dataset llava_shards: {path} is not valid JSON: {exc}") from None
        if not isinstance(spec, dict) or spec.get("__kind__") != INDEX_KIND or not spec.get("shardlist"):
            raise ValueError(f"dataset llava_shards: {path} is not a shard index ({{'__kind__': '{INDEX_KIND}', "
                             f"'shardlist': [{{'url', 'nsamples'}}, ...]}})")
        for shard in spec["shardlist"]:
            url = str(shard.get("url", ""))
            if "://" not in url and not (path.parent / url).is_file():
                raise FileNotFoundError(f"dataset llava_shards: {path} lists shard {url!r}, not found next to it")
        self.path = path
        self.name, self.shuffle_turns, self.seed = name, shuffle_turns, seed
        local = _LocalOrCached(path.parent, Path(cache_dir).expanduser() if cache_dir else path.parent / ".cache")
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):  # wids prints a summary line
            self.shards = wids.ShardListDataset(str(path), localname=local, transformations=[])
        self.size = len(self.shards) if max_samples is None else min(max_samples, len(self.shards))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> Sample:
        if not 0 <= idx < self.size:
            raise IndexError(f"dataset llava_shards: index {idx} out of range ({self.size} samples)")
        raw = self.shards[idx]
        key = raw.get("__key__", idx)
        if ".json" not in raw:
            raise ValueError(f"dataset llava_shards: sample {key!r} in {raw.get('__shard__')} has no .json record")
        try:
            rec = json.loads(raw[".json"].read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"dataset llava_shards: sample {key!r} in {raw.get('__shard__')}: bad JSON: {exc}") from None
        members = sorted((k for k in raw if k.lower().endswith(IMAGE_EXTENSIONS)), key=_natural)
        where = f"{raw.get('__shard__')}:{key}"
        return self._to_sample(rec, idx, members,
                               lambda: [read_image(raw[m], name=f"{where}{m}") for m in members])


def _natural(member: str) -> tuple:
    """``.2.png`` before ``.10.png``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", member))


class _LocalOrCached:
    """wids' ``localname``: a shard next to the index is read where it lies; a remote one is cached."""

    def __init__(self, base: Path, cache: Path) -> None:
        self.base, self.cache = base, cache

    def __call__(self, url: str) -> str:
        if "://" not in url:
            local = Path(url) if Path(url).is_absolute() else self.base / url
            return str(local if local.is_file() else self.base / Path(url).name)
        self.cache.mkdir(parents=True, exist_ok=True)
        return str(self.cache / url.replace("/", "_").replace(":", "_"))


def write_llava_shards(data_path: str | Path, out_dir: str | Path, *, image_dir: str | Path | None = None,
                       samples_per_shard: int = 1000) -> Path:
    """Write the records of a ``llava_json`` file as tar shards + ``index.json`` in ``out_dir``; returns the
    index. Image files go in unchanged (their bytes, their extension)."""
    import webdataset as wds

    data_path = Path(data_path).expanduser()
    records = json.loads(data_path.read_text())
    image_dir = Path(image_dir).expanduser() if image_dir else data_path.parent
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=samples_per_shard, verbose=0) as sink:
        for i, rec in enumerate(records):
            files = rec.get("image") or []
            files = [files] if isinstance(files, str) else list(files)
            sample: dict[str, Any] = {"__key__": f"{i:09d}", "json": json.dumps(rec).encode()}
            for n, name in enumerate(files):
                ext = Path(name).suffix.lower().lstrip(".") or "png"
                sample[f"{n}.{ext}" if len(files) > 1 else ext] = (image_dir / name).read_bytes()
            sink.write(sample)
            shard = os.path.basename(sink.fname)
            counts[shard] = counts.get(shard, 0) + 1
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": data_path.stem,
             "shardlist": [{"url": name, "nsamples": n, "filesize": (out / name).stat().st_size}
                           for name, n in sorted(counts.items())]}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return out / "index.json"

