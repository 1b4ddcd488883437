"""train.py's OUT/report.html, the page to watch a run by: curves of the loss (total, fg, bg), lr, gradient norm,
step time, tokens/s, MFU and the validation loss as inline SVG, the resolved recipe, and the validation videos by
step (the newest first), drawn from log.jsonl and val.jsonl, so a resumed run's page shows the whole run. Checked
in a real headless Chromium (tests/test_report.py's driver; skipped where none is installed).

    python -m pytest -q tests/test_train_report.py
"""
import base64
import io
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

import train
from conftest import single_thread

one_thread = single_thread("module")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tiny_base, tiny_data, tmp_path_factory):
    """A 4-step toy run logged every step and validated every 2, stopped at step 2 and resumed -> (out, stdout)."""
    out = tmp_path_factory.mktemp("report run") / "run"           # a space in the path: links stay relative
    flags = ["--model", tiny_base, "--preset", "toy", "--data", tiny_data, "--out", out, "--batch", "2", "--steps",
             "4", "--warmup", "2", "--log-every", "1", "--val-every", "2", "--val-steps", "2", "--workers", "1",
             "--threads", "1"]
    train.main(train.parser.parse_args([str(x) for x in flags + ["--stop-at", "2"]]))
    first = (out / "report.html").read_text()
    assert first.count('data-series="loss"') == 1 and 'data-series="loss" data-points="2"' in first
    import contextlib
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        train.main(train.parser.parse_args([str(x) for x in flags + ["--resume"]]))
    return out, said.getvalue()


@pytest.mark.slow
def test_report_page_holds_the_whole_run(run):
    out, said = run
    page = (out / "report.html").read_text()
    points = dict(re.findall(r'data-series="(\w+)" data-points="(\d+)"', page))
    assert points == {"loss": "4", "loss_fg": "4", "loss_bg": "4", "lr": "4", "grad_norm": "4", "s_per_step": "4",
                      "tokens_per_s": "4", "val_loss": "2", "val_loss_fg": "2", "val_loss_bg": "2"}
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="curve"') == 7
    assert 'data-key="mfu"' in page and "not recorded on this run" in page          # MFU: CUDA only
    steps = [int(s) for s in re.findall(r'<section class="val" data-step="(\d+)"', page)]
    assert steps == [4, 2]                                                          # the newest first
    srcs = re.findall(r'<video data-src="([^"]+)"', page)
    assert srcs == ["val/step0000004_0.mp4", "val/step0000004_1.mp4", "val/step0000002_0.mp4",
                    "val/step0000002_1.mp4"] and all((out / unquote(s)).is_file() for s in srcs)
    stored = json.loads((out / "args.json").read_text())
    assert "<td>--lr</td><td>0.001</td>" in page and "<td>--recipe</td><td>&quot;toy&quot;</td>" in page
    assert stored["lr"] == 1e-3 and stored["recipe"] == "toy" and stored["global_batch"] == 2
    summary = [line for line in said.splitlines() if line.startswith("summary: ")]
    assert len(summary) == 1 and summary[0].startswith("summary: 4 steps, 8 samples, ")
    assert "best validation loss" in summary[0] and "mean MFU n/a" in summary[0]
    assert summary[0].split(" (report:")[0].replace("&#x27;", "'") in page.replace("&#x27;", "'")
    vals = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [2, 4] and all(v["val_loss"] > 0 for v in vals)
    assert not list(out.glob(".report.html.*"))                                     # written atomically


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")
def test_report_renders_in_chromium(run, tmp_path):
    from test_report import Chromium
    out, _ = run
    b = Chromium(tmp_path / "profile", width=1300, height=1800)
    try:
        b.open((out / "report.html").as_uri())
        curves = b.js("[...document.querySelectorAll('svg.curve polyline')].map(p => "
                      "p.dataset.series + '=' + p.points.numberOfItems)")
        assert sorted(curves) == sorted(["loss=4", "loss_fg=4", "loss_bg=4", "lr=4", "grad_norm=4", "s_per_step=4",
                                         "tokens_per_s=4", "val_loss=2", "val_loss_fg=2", "val_loss_bg=2"])
        assert b.js("document.querySelector('svg.curve').getBBox().width") > 100    # laid out, not empty
        b.js("document.querySelector('section.val').scrollIntoView()")
        ready = b.poll("decoded()", lambda s: s == "4/4")
        assert ready == "4/4", ready                                              # every video shows a frame
        shot = base64.b64decode(b.page("Page.captureScreenshot", format="png")["data"])
    finally:
        b.close()
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("STM_SHOT"):                                          # to look at it: STM_SHOT=path.png
        (Path(os.environ["STM_SHOT"])).write_bytes(shot)
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(float)
    assert img.shape[:2] == (1800, 1300) and img.std() > 20                      # not a blank page
