"""Makes the WebP fixtures and Pillow's decodes of them.

    python make.py    # needs Pillow (with libwebp), numpy

Sources: ../../../../tests/fixtures/photos/skimage-rocket.jpg (public domain,
see tests/fixtures/PROVENANCE.md), cropped and scaled; the alpha channel is a
synthetic gradient with a hole. Each NAME.webp gets NAME.pillow.png, Pillow's
decode (RGB, or RGBA for files with alpha; the first frame of an animation),
which the decoder must match exactly.
"""
import numpy as np
from PIL import Image

src = Image.open("../../../../tests/fixtures/photos/skimage-rocket.jpg").convert("RGB")
photo = src.crop((0, 0, min(src.size), min(src.size))).resize((203, 151), Image.BICUBIC)
w, h = photo.size
yy, xx = np.mgrid[0:h, 0:w]
alpha = (255 * xx / (w - 1)).astype(np.uint8)
alpha[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < 30**2] = 0
rgba = photo.copy()
rgba.putalpha(Image.fromarray(alpha))

photo.save("lossy.webp", quality=80, method=4)
rgba.save("lossy_alpha.webp", quality=80, method=4)
rgba.save("lossless_alpha.webp", lossless=True)
frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
frames[0].save("animated.webp", save_all=True, append_images=frames[1:], duration=100, quality=80)
data = open("lossy.webp", "rb").read()
open("truncated.webp", "wb").write(data[: len(data) * 2 // 3])

for name in ["lossy", "lossy_alpha", "lossless_alpha", "animated"]:
    im = Image.open(f"{name}.webp")
    im.seek(0)
    im = im.convert("RGBA" if "alpha" in name else "RGB")
    im.save(f"{name}.pillow.png")
    print(name, im.size, im.mode)
