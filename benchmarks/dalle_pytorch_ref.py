"""DALLE-pytorch 1.6.6's side of benchmarks/compare.py; runs in the reference venv, never in ours.

    VENV/bin/python -P benchmarks/dalle_pytorch_ref.py make MODEL PATH   # random weights -> a train_dalle.py file
    VENV/bin/python -P benchmarks/dalle_pytorch_ref.py run SPEC_JSON     # one timed generation -> one JSON line
    VENV/bin/python -P benchmarks/dalle_pytorch_ref.py check             # cached == uncached codes (the fix below)
    VENV/bin/python -P benchmarks/dalle_pytorch_ref.py train SPEC_JSON   # one timed training step -> one JSON line

(-P: this repository's own `dalle_pytorch` must not shadow the installed one.)
`bash benchmarks/dalle_pytorch_ref.sh` builds the venv.  Only the standard library and the
reference package are imported here, so the file does not depend on our package.

The cache fix: DALLE-pytorch 1.6.6's `forward_with_cond_scale` returns `self(*args, **kwargs)`
at cond_scale 1, dropping the `cache` argument that `generate_images(use_cache=True)` passes, so
its cached path only runs with guidance.  `keep_cache_at_cond_scale_1` passes the cache through
(the method is replaced on the class at run time; the installed files are not edited).
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

# process_stats.py beside this file (run with -P from another folder: appended, so it shadows nothing)
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from process_stats import peak_rss_mb, rss_mb, time_first_call  # noqa: E402

# the two models of the comparison (compare.py holds the same table for our side)
MODELS = {
    # benchmarks/generate.py's model: dim 256, depth 4, 4 heads of 64, text 32, 16x16 codes of 512
    "bench": dict(dim=256, depth=4, heads=4, dim_head=64, num_text_tokens=10000, text_seq_len=32, num_tokens=512),
    # the size people trained and shared with DALLE-pytorch: dim 512, depth 16, 8 heads of 64,
    # text 128, 16x16 codes of 1024 (a VQGAN f16's grid and codebook)
    "community": dict(dim=512, depth=16, heads=8, dim_head=64, num_text_tokens=10000, text_seq_len=128, num_tokens=1024),
}


def keep_cache_at_cond_scale_1():
    from dalle_pytorch.dalle_pytorch import DALLE

    original = DALLE.forward_with_cond_scale

    def forward_with_cond_scale(self, *args, cond_scale=1, cache=None, **kwargs):
        if cond_scale == 1:
            return self(*args, cache=cache, **kwargs)
        return original(self, *args, cond_scale=cond_scale, cache=cache, **kwargs)

    DALLE.forward_with_cond_scale = forward_with_cond_scale


def vae_params(cfg: dict) -> dict:
    # a tiny VAE whose grid is 16x16 (image 32, one downsampling): the transformer is what is timed
    return dict(image_size=32, num_layers=1, num_tokens=cfg["num_tokens"], codebook_dim=16, hidden_dim=8, num_resnet_blocks=0)


def hparams(cfg: dict, attn_types=("full",)) -> dict:
    return dict(num_text_tokens=cfg["num_text_tokens"], text_seq_len=cfg["text_seq_len"], dim=cfg["dim"],
                depth=cfg["depth"], heads=cfg["heads"], dim_head=cfg["dim_head"], reversible=False,
                loss_img_weight=7, attn_types=list(attn_types), ff_dropout=0.0, attn_dropout=0.0, stable=False,
                shift_tokens=True, rotary_emb=True)


def build(hp: dict, vp: dict):
    from dalle_pytorch import DALLE, DiscreteVAE

    return DALLE(vae=DiscreteVAE(**vp), **hp).eval()


def make(model: str, path: str, attn_types: str = "full") -> None:
    """Random weights (seed 0), saved as DALLE-pytorch's train_dalle.py saves them."""
    torch.manual_seed(0)
    cfg = MODELS[model]
    hp, vp = hparams(cfg, attn_types.split(",")), vae_params(cfg)
    dalle = build(hp, vp)
    torch.save({"hparams": hp, "vae_params": vp, "weights": dalle.state_dict(), "version": "1.6.6",
                "vae_class_name": "DiscreteVAE", "epoch": 0}, path)


def load(path: str):
    obj = torch.load(path, weights_only=True)
    dalle = build(obj["hparams"], obj["vae_params"])
    dalle.load_state_dict(obj["weights"])
    return dalle.eval()


def run(spec: dict) -> dict:
    """spec: checkpoint, batch, cond_scale, threads, repeat.  Times generate_images(use_cache=True)
    over whole images (prefill, 256 steps, VAE decode) and the time to the first image code."""
    import dalle_pytorch.dalle_pytorch as ref

    torch.set_num_threads(spec["threads"])
    keep_cache_at_cond_scale_1()
    dalle = load(spec["checkpoint"])
    first = time_first_call(ref, "gumbel_sample")
    b, T = spec["batch"], dalle.text_seq_len
    text = torch.randint(1, dalle.num_text_tokens - T, (b, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.manual_seed(0)
        first.append(None)
        dalle.generate_images(text[:1], cond_scale=spec["cond_scale"], use_cache=True,
                              img=torch.rand(1, 3, 32, 32), num_init_img_tokens=dalle.image_seq_len - 2)  # warm-up
        rss_before = rss_mb()
        times, ttft = [], []
        for _ in range(spec["repeat"]):
            first.append(None)
            t0 = time.perf_counter()
            dalle.generate_images(text.clone(), cond_scale=spec["cond_scale"], use_cache=True)
            times.append(time.perf_counter() - t0)
            ttft.append(first[-1] - t0)
    peak = peak_rss_mb()
    return {"impl": "DALLE-pytorch 1.6.6", "seconds": min(times), "all_seconds": times, "first_token": min(ttft),
            "peak_rss_mb": peak, "rss_before_mb": rss_before}


def train(spec: dict) -> dict:
    """spec: checkpoint, batch, threads, repeat.  Times one training step as its train_dalle.py takes it:
    loss = dalle(text, codes, return_loss=True), backward, clip_grad_norm_(0.5), Adam step (best of repeat,
    after two warm-up steps), and reports the first step's loss (the same weights give the same loss here)."""
    torch.set_num_threads(spec["threads"])
    dalle = load(spec["checkpoint"]).train()
    params = [p for p in dalle.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-4)
    b, T = spec["batch"], dalle.text_seq_len
    g = torch.Generator().manual_seed(0)
    text = torch.randint(1, dalle.num_text_tokens - T, (b, T), generator=g)
    codes = torch.randint(0, dalle.num_image_tokens, (b, dalle.image_seq_len), generator=g)
    losses, times = [], []
    for i in range(2 + spec["repeat"]):
        t0 = time.perf_counter()
        loss = dalle(text, codes, return_loss=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return {"impl": "DALLE-pytorch 1.6.6", "seconds": min(times[2:]), "all_seconds": times[2:], "first_loss": losses[0]}


def check() -> None:
    """With the fix, DALLE-pytorch's cached generation samples its uncached codes (same seed)."""
    keep_cache_at_cond_scale_1()
    torch.manual_seed(0)
    hp = hparams(dict(MODELS["bench"], dim=64, depth=2, heads=2, text_seq_len=8))
    dalle = build(hp, dict(vae_params(MODELS["bench"]), image_size=16))
    text = torch.randint(1, 9000, (2, 8), generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad():
        for use_cache in (True, False):
            torch.manual_seed(1)
            out.append(dalle.generate_images(text.clone(), use_cache=use_cache))
    print(json.dumps({"cached_equals_uncached": bool(torch.equal(out[0], out[1]))}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(*sys.argv[2:5])
    elif cmd == "run":
        print(json.dumps(run(json.loads(sys.argv[2]))))
    elif cmd == "train":
        print(json.dumps(train(json.loads(sys.argv[2]))))
    elif cmd == "check":
        check()
    else:
        raise SystemExit(f"unknown command {cmd!r}: make | run | train | check")
