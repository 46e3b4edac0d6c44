"""`omniplug infer` on the tiny generation config writes the generated image as a PNG."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from PIL import Image

from omniplug.cli import main


def test_infer_writes_generated_png(tiny_dir, tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["infer", "-c", str(tiny_dir / "gen.yaml"), "--prompt", "Draw a red circle.",
                     "--answer-prefix", "<gen_0><gen_1><gen_2><gen_3>", "--max-new-tokens", "2",
                     "--out", str(tmp_path / "o"), "--json"])
    assert code == 0
    result = json.loads(out.getvalue())
    assert len(result["images"]) == 1 and "[image 1]" in result["text"]
    with Image.open(result["images"][0]) as im:
        assert im.format == "PNG" and im.size[0] > 0
