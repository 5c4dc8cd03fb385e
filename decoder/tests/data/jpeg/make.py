"""Regenerates the JPEG fixtures of glimpse-decoder's libjpeg-turbo-exact decoder.

Run with Pillow 13.0.0 (which bundles libjpeg-turbo): `python make.py`. Each
`NAME.jpg` is encoded by Pillow with the settings below and `NAME.pillow.png`
is Pillow's own decode of it, `Image.open(NAME.jpg).convert("RGB")`, which the
Rust decoder must reproduce exactly (src/jpeg.rs tests).
"""
import os
import sys

import numpy as np
from PIL import Image

out = os.path.dirname(os.path.abspath(__file__))
reduced_only = sys.argv[1:] == ["--reduced-only"]
rng = np.random.default_rng(0)
h, w = 29, 37
y, x = np.mgrid[0:h, 0:w]
base = np.stack([(x * 7) % 256, (y * 9) % 256, ((x + y) * 5) % 256], -1)
noise = rng.integers(0, 60, (h, w, 3))
img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
cases = {
    "baseline_420": dict(quality=80, subsampling=2),
    "baseline_422": dict(quality=80, subsampling=1),
    "baseline_444": dict(quality=95, subsampling=0),
    "progressive_420": dict(quality=80, subsampling=2, progressive=True),
    "progressive_444": dict(quality=90, subsampling=0, progressive=True),
    "restart_420": dict(quality=80, subsampling=2, restart_marker_blocks=2),
    "progressive_restart_420": dict(quality=75, subsampling=2, progressive=True, restart_marker_rows=1),
}
for name, kw in cases.items():
    if reduced_only:
        break
    img.save(f"{out}/{name}.jpg", **kw)
if not reduced_only:
    img.convert("L").save(f"{out}/gray.jpg", quality=85)
    img.convert("L").save(f"{out}/gray_progressive.jpg", quality=85, progressive=True)
    # Chroma planes 1-2 samples wide: libjpeg-turbo replicates instead of "fancy" upsampling.
    img.crop((0, 0, 3, 2)).save(f"{out}/tiny_3x2_420.jpg", quality=90, subsampling=2)
    img.crop((0, 0, 1, 1)).save(f"{out}/tiny_1x1_420.jpg", quality=90, subsampling=2)
    for f in sorted(os.listdir(out)):
        if f.endswith(".jpg"):
            Image.open(f"{out}/{f}").convert("RGB").save(f"{out}/{f[:-4]}.pillow.png")
# Reduced decodes (libjpeg-turbo's scaled IDCT, as Pillow's draft() asks for
# it): NAME.pillow-rN.png is NAME.jpg decoded at 1/N, N = 2, 4, 8.
# `python make.py --reduced-only` makes only these, from the JPEGs present.
for f in sorted(os.listdir(out)):
    if not f.endswith(".jpg"):
        continue
    for r in (2, 4, 8):
        im = Image.open(f"{out}/{f}")
        w, h = im.size
        if w // r == 0 or h // r == 0:
            continue
        im.draft("RGB", (w // r, h // r))
        assert im.size == (-(-w // r), -(-h // r)), (f, r, im.size)
        im.convert("RGB").save(f"{out}/{f[:-4]}.pillow-r{r}.png")
