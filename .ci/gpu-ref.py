"""The reference on a lent GPU machine, for .ci/gpu-measure's side by side:
HF transformers' CLIPModel with the default CLIPConfig (ViT-B/32 shapes,
random weights: speed does not depend on the values) on the first CUDA GPU,
fp32 and bf16 (autocast, as the issue's CPU reference was taken, and the
weights cast to bf16), images/s at batch 1, 8, 32, 128 and 256 and one text
query's tokenise-free encode time (the same 9 tokens as Glimpse's query).
Prints one JSON object."""
import json
import time

import torch
from transformers import CLIPConfig, CLIPModel


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def rate(fn, n, reps=30, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(n / (time.perf_counter() - t))
    return median(out)


torch.manual_seed(0)
dev = torch.device("cuda")
base = CLIPModel(CLIPConfig()).eval().to(dev)
report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
ids = torch.tensor([[49406, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 49407]], device=dev)
for mode in ["fp32", "bf16_autocast", "bf16_weights"]:
    model = base.to(torch.bfloat16) if mode == "bf16_weights" else base.float()
    dtype = torch.bfloat16 if mode == "bf16_weights" else torch.float32
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if mode == "bf16_autocast" \
        else torch.no_grad
    images = {}
    with torch.inference_mode(), ctx():
        for b in [1, 8, 32, 128, 256]:
            x = torch.randn(b, 3, 224, 224, device=dev, dtype=dtype)
            images[f"batch_{b}"] = rate(lambda: model.get_image_features(pixel_values=x), b)
        q = 1 / rate(lambda: model.get_text_features(input_ids=ids), 1, reps=200)
    report[mode] = {"image_embeddings_per_s": images, "query_encode_ms_p50": q * 1e3}
print(json.dumps(report, indent=2))
