"""decompose.py --preview: one self-contained HTML page of a Split output, checked in a real headless Chromium
(skipped where none is installed: `apt-get install chromium`)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plumbing.dataset import read_metadata
from plumbing.video import mask_to_rgb, write_video
import toy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A small Split output: 3 raw toy clips with their true masks, one too short to be kept."""
    d = tmp_path_factory.mktemp("split")
    for i in range(3):
        c = toy.clip(40 + i, T=9 if i < 2 else 5, H=64, W=96)
        write_video(d / "clips" / f"c{i}.mp4", c["video"], fps=8)
        write_video(d / "masks" / f"c{i}.mp4", mask_to_rgb(c["mask"]), fps=8)
    r = subprocess.run([sys.executable, str(ROOT / "decompose.py"), "--videos", str(d / "clips"), "--out",
                        str(d / "out"), "--frames", "9", "--size", "64", "96", "--segmenter", "gt", "--masks",
                        str(d / "masks"), "--min-fg", "0.001", "--static", "0", "--template", "a {stem} clip"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(ROOT / "decompose.py"), "--preview", str(d / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return d / "out"


@pytest.mark.slow
def test_preview_page_is_self_contained(split):
    page = (split / "preview.html").read_text()
    recs = [r for r in read_metadata(split) if r["status"] == "ok"]
    assert len(recs) == 2
    assert page.count('src="data:image/gif;base64,') == 4 * len(recs)           # input | mask | fg | bg per clip
    assert not re.search(r'src="(?!data:)', page)                               # no file beside it is needed
    for r in recs:
        assert r["caption"] in page and r["id"] in page
    assert "2</b> clips kept of" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")
def test_preview_renders_in_chromium(split, tmp_path):
    url = (split / "preview.html").as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'p1'}", "--virtual-time-budget=10000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == "8", dom[:500]      # every image decoded
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1000,900",
                    "--virtual-time-budget=5000", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert img.shape[:2] == (900, 1000) and img.std() > 20                       # not a blank page


@pytest.mark.slow
def test_preview_shows_a_missing_layer_file_instead_of_failing(tmp_path):
    """A clip file deleted after the Split: the page is still written, that cell says so and the page names it
    (mutation: the try around gif_data_uri removed -> FileNotFoundError out of decompose.py --preview)."""
    toy.write_data(tmp_path / "d", 2)
    gone = sorted((tmp_path / "d" / "fg").iterdir())[0]
    gone.unlink()
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "decompose.py"), "--preview",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    page = (tmp_path / "d" / "preview.html").read_text()
    assert "1 layer file(s) missing or unreadable" in page and gone.stem in page
    assert page.count("<img ") == 2 * 4 - 1
