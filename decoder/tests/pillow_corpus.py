"""Writes Pillow 13's reference for tests/pillow_corpus.rs: for every image under ROOT that Pillow opens,
its upright RGB decode (`ImageOps.exif_transpose(im).convert("RGB")`, as NNN.png) and the HF
CLIPImageProcessor pixels at 224 (resize shortest side BICUBIC, centre crop, rescale, normalise; NNN.f32,
little-endian [3,224,224]), plus manifest.json.

    python tests/pillow_corpus.py ../../shared/data/photos /tmp/pillow-ref
    GLIMPSE_PILLOW_REF=/tmp/pillow-ref cargo test -p glimpse-decoder --test pillow_corpus -- --ignored --nocapture
"""
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps
Image.MAX_IMAGE_PIXELS = None
root = sys.argv[1]  # e.g. shared/data/photos
out = sys.argv[2]  # output folder (must exist)
S = 224
mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
manifest = []
for sub in ['cameras', 'samples', 'wallpapers', 'heif']:
    for dp, dn, fn in os.walk(os.path.join(root, sub)):
        for f in sorted(fn):
            p = os.path.join(dp, f)
            try:
                im = Image.open(p)
                fmt = im.format; mode = im.mode
                im = ImageOps.exif_transpose(im)
                rgb = im.convert('RGB')
            except Exception as e:
                manifest.append({'path': p, 'error': str(e)[:100]}); continue
            key = str(len(manifest))
            rgb.save(os.path.join(out, key + '.png'))
            w, h = rgb.size
            short, long = (w, h) if w <= h else (h, w)
            nl = int(S * long / short)
            size = (S, nl) if w <= h else (nl, S)
            r = rgb.resize(size, Image.BICUBIC, reducing_gap=None) if size != rgb.size else rgb.copy()
            a = np.asarray(r)
            H, W = a.shape[:2]
            top, left = (H - S) // 2, (W - S) // 2
            a = a[top:top+S, left:left+S]
            x = (a.astype(np.float64) * 0.00392156862745098).astype(np.float32)
            x = (x - mean) / std
            x.transpose(2, 0, 1).astype('<f4').tofile(os.path.join(out, key + '.f32'))
            manifest.append({'path': p, 'key': key, 'format': fmt, 'mode': mode, 'size': [w, h]})
json.dump(manifest, open(os.path.join(out, 'manifest.json'), 'w'), indent=0)
print(len(manifest), sum('key' in m for m in manifest))
