"""Generate images from captions with a trained DALLE (ours or a DALLE-pytorch checkpoint).

    python generate.py --text "a red circle on a blue background"            # the shipped demo model
    python generate.py --dalle_path dalle.safetensors --text "..." --num_images 8 --seed 0
    python generate.py --dalle_path dalle.pt --vae_path vae.pt --prompts_file captions.txt
    torchrun --nproc_per_node 4 generate.py --dalle_path dalle.safetensors --prompts_file big.txt --seed 0

Every caption gets a new folder outputs/<slug>/ (or <slug>-2, ...) with NNN_seedS.png images,
grid.png and generation.json. See docs/generation.md for every flag.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import torch
from tqdm.auto import tqdm

from dalle_pytorch.checkpoint.pretrained import vae_flags, vae_from_flags
from dalle_pytorch.cli.flags import add_vae_flags, flag_names, prog_name
from dalle_pytorch.cli.messages import flag_errors, one_line_warnings
from dalle_pytorch.distributed import DistEnv, init_distributed
from dalle_pytorch.errors import CheckpointError, GenerationError, TrainingError
from dalle_pytorch.generation.decode import generate_texts
from dalle_pytorch.generation.sampling import FILTER_SCOPES, SamplingConfig
from dalle_pytorch.pipeline.outputs import (append_index, check_outputs_dir, create_run_dir, file_sha256, load_image,
                                            load_mask, make_run_dir, plan_run_dirs, read_prompts, save_outputs,
                                            split_captions)
from dalle_pytorch.pipeline.text_to_image import DEMO, DTYPES, Pipeline, batch_seeds, fresh_seed, resolve_checkpoint
from dalle_pytorch.pipeline.variations import check_strength


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog_name("dalle-generate"), allow_abbrev=False,
        description="Generate images from captions with a trained DALLE. Each caption gets a new folder "
                    "OUTPUTS_DIR/<slug>/ with NNN_seedS.png, grid.png and generation.json.")
    model = p.add_argument_group("model")
    model.add_argument("--dalle_path", default=None,
                       help=f"DALLE checkpoint: ours (.safetensors) or DALLE-pytorch's (.pt); '{DEMO}' or omitted: "
                            "the demo model shipped with the package (coloured shapes, 32x32)")
    model.add_argument("--vae_path", default=None,
                       help="VAE checkpoint (ours: DiscreteVAE, VQGanVAE or OpenAIDiscreteVAE; or a DALLE-pytorch "
                            "vae.pt) to use instead of the one stored with the DALLE (needed for DALLE-pytorch "
                            "files saved without vae_params)")
    model.add_argument("--clip_path", default=None,
                       help="CLIP to rerank the images with (best first): a CLIP checkpoint of ours, or with "
                            "--clip_model the weights file of a pretrained OpenCLIP / OpenAI CLIP")
    model.add_argument("--clip_model", default=None,
                       help="rerank with open_clip (the [clip] extra): an open_clip model name (e.g. ViT-B-32) or "
                            "model config JSON whose weights --clip_path holds (nothing is downloaded)")
    model.add_argument("--bpe_path", default=None,
                       help="tokenizer file overriding the checkpoint's: a `tokenizers` JSON with --hug (or any "
                            "*.json), a youtokentome BPE model (e.g. model.bpe, recognised by its content), else a "
                            "CLIP BPE merges file (.txt / .txt.gz)")
    model.add_argument("--hug", action="store_true",
                       help="--bpe_path is a HuggingFace `tokenizers` JSON file (without --bpe_path: ignored, as in "
                            "DALLE-pytorch, unless that would pick the wrong tokenizer)")
    model.add_argument("--chinese", action="store_true",
                       help="Chinese captions: --bpe_path is bert-base-chinese's vocab.txt (DALLE-pytorch's "
                            "ChineseTokenizer); a checkpoint of ours stores it")
    add_vae_flags(model, "DALLE-pytorch's VQGAN for a DALLE-pytorch checkpoint saved over it: from --vqgan_model_path "
                         "/ --vqgan_config_path, else the files DALLE-pytorch downloaded to ~/.cache/dalle")

    text = p.add_argument_group("captions")
    text.add_argument("--text", default=None,
                      help="the caption; several captions may be separated by '|'. With --gentxt: the start of "
                           "the caption to continue (optional)")
    text.add_argument("--prompts_file", default=None, help="a text file with one caption per line")
    text.add_argument("--gentxt", "--gentext", dest="gentxt", action="store_true",
                      help="first sample a caption with the model (continuing --text if given), then images for it")
    text.add_argument("--negative_prompt", "--null_text", dest="negative_prompt", default=None,
                      help="the caption guidance steers away from (needs --cond_scale != 1); --null_text is its "
                           "former name")

    samp = p.add_argument_group("sampling")
    samp.add_argument("--num_images", type=int, default=128, help="images per caption (default 128, as DALLE-pytorch)")
    samp.add_argument("--batch_size", type=int, default=4,
                      help="images sampled together (default 4); batch k uses seed + k, so a file is reproduced "
                           "by the same --seed and --batch_size")
    samp.add_argument("--top_k", "--filter_thres", dest="filter_thres", type=float, default=0.9,
                      help="DALLE-pytorch's filter_thres: keep the top (1 - top_k) fraction of the model's whole "
                           "vocabulary, text tokens included, so at most all the codes (default 0.9)")
    samp.add_argument("--filter_scope", choices=FILTER_SCOPES, default="vocab",
                      help="what --top_k's fraction counts: vocab = the whole vocabulary (DALLE-pytorch), candidates "
                           "= only the image codes (or text tokens with --gentxt): 0.9 keeps the top 10%% of the "
                           "codes (default vocab)")
    samp.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold in (0, 1] (default off)")
    samp.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    samp.add_argument("--cond_scale", type=float, default=1.0,
                      help="classifier-free guidance scale (default 1 = none; > 1 follows the caption more "
                           "closely; the model must have been trained with caption dropout)")
    samp.add_argument("--cond_schedule", default="constant", metavar="SCHEDULE",
                      help="the guidance scale by code position (needs --cond_scale != 1): constant (the default), "
                           "interval:A:B (guided for codes A*I <= t < B*I of I only: the null rows leave the batch "
                           "at its end, so later codes cost unguided ones) or linear (1 at the first code to "
                           "--cond_scale at the last)")
    samp.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed and saved)")
    samp.add_argument("--img", default=None, help="image file whose first codes prime every generated image")
    samp.add_argument("--mask", default=None,
                      help="masked completion (inpainting / outpainting): a black-and-white image; the codes of --img "
                           "where it is white are kept, the rest sampled (in raster order: a kept code conditions "
                           "only the codes after it)")
    samp.add_argument("--num_init_img_tokens", type=int, default=None,
                      help="how many codes of --img to keep (default 43.75%% of the image's codes)")
    samp.add_argument("--canvas", type=_grid, default=None, metavar="HxW",
                      help="sample a canvas of H x W codes, larger than the trained grid (each code with the "
                           "trained-size window around it); with --img, its codes are kept at --img_offset "
                           "(outpainting), or only its first --num_init_img_tokens, or what --mask keeps")
    samp.add_argument("--img_offset", type=_offset, default=(0, 0), metavar="ROW,COL",
                      help="with --canvas and --img: where the image's top-left code goes on the canvas (default 0,0)")
    samp.add_argument("--variations_of", default=None, metavar="IMAGE",
                      help="variations of an image: an image file (encoded once by the VAE) or codes:C0,C1,... (an "
                           "earlier image's codes, as the server's answers give them); --strength of its codes are "
                           "resampled for --text (optional: the empty caption), the others kept exactly")
    samp.add_argument("--strength", type=float, default=None,
                      help="with --variations_of: the share of the codes resampled, in [0, 1] (default 0.5; 0 = the "
                           "image itself, 1 = free sampling)")
    samp.add_argument("--variation_mode", choices=["suffix", "random"], default=None,
                      help="with --variations_of: resample the last codes in raster order, the bottom-right share "
                           "(suffix, the default: each new code sees every kept one) or a random set of positions "
                           "drawn from --seed (random)")
    samp.add_argument("--use_cache", dest="use_cache", action="store_true", default=True,
                      help="cached decoding (the default)")
    samp.add_argument("--no_use_cache", dest="use_cache", action="store_false",
                      help="recompute the whole sequence for every token: the same images, slower")
    samp.add_argument("--compile", nargs="?", const="prefix", default=None, choices=["prefix", "static"],
                      help="torch.compile the cached decode step: the same images, faster after a compile of "
                           "several seconds. 'prefix' (the default when given without a value) is the "
                           "fastest on CPU; 'static' keeps every shape fixed (for CUDA graphs)")
    samp.add_argument("--speculative", type=_window, default=None, metavar="K",
                      help="speculative Jacobi decoding: verify K drafted codes per forward pass (fewer passes "
                           "than codes; the same distribution, other samples than plain decoding); 'auto': on "
                           "for small batches, where it pays (see docs/generation.md)")

    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto",
                     help="'auto' (cuda if available, else Apple's mps, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps' "
                          "(mps is untested)")
    run.add_argument("--dtype", default="float32", choices=list(DTYPES),
                     help="weights and activations (default float32; float16 needs a GPU)")
    run.add_argument("--quantize", default=None, choices=["int8", "int4"],
                     help="decode with int8 or int4 weights: fewer bytes per step, a small cost in quality "
                          "(docs/generation.md); a checkpoint saved quantized is used as it is")
    run.add_argument("--outputs_dir", default="./outputs", help="where run folders are created (default ./outputs)")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    run.add_argument("--no_pack_weights", action="store_true",
                     help="decode with the weights as they are instead of copies packed for oneDNN's CPU kernel: "
                          "slower, but saves as much memory as the transformer's weights (the same images)")
    return p.parse_args(argv)


def _grid(text: str) -> tuple[int, int]:
    """--canvas's value: HxW codes."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be HxW in codes, e.g. 16x32, got {text!r}")
    return int(parts[0]), int(parts[1])


def _offset(text: str) -> tuple[int, int]:
    """--img_offset's value: ROW,COL codes."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be ROW,COL in codes, e.g. 0,16, got {text!r}")
    return int(parts[0]), int(parts[1])


def _window(text: str):
    """--speculative's value: 'auto' or an integer."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None


def _captions(args) -> list:
    captions = []
    if args.text is not None:
        captions += split_captions(args.text)
    if args.prompts_file is not None:
        captions += read_prompts(args.prompts_file)
    if args.gentxt:
        return captions or [None]  # None: the model writes the whole caption
    if not captions and args.variations_of is not None:
        return [""]  # variations of an image for the empty caption
    if not captions:
        raise GenerationError("give a caption with --text \"...\" or --prompts_file FILE (or --gentxt)")
    return captions


def _postfix_codes(bar: tqdm, every: float = 0.2):
    """A Pipeline callback showing the current batch's codes as the bar's postfix (redrawn at most
    every `every` seconds), so that one bar shows both levels of progress."""
    last = [0.0]

    def show(step) -> None:
        bar.set_postfix_str(f"codes {step.filled}/{step.total}", refresh=False)
        now = time.monotonic()
        if now - last[0] >= every or step.filled == step.total:
            last[0] = now
            bar.refresh()

    return show


def _launched_ranks() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _shared(env: DistEnv, work) -> object:
    """Run `work()` on rank 0 and give its result to every rank; an error there is raised on every rank
    (so that no rank waits for one that stopped)."""
    result = error = None
    if env.is_main:
        try:
            result = work()
        except (GenerationError, OSError) as e:
            error = str(e)
    result, error = env.all_gather_object((result, error))[0]
    if error is not None:
        raise GenerationError(error)
    return result


def main(args: argparse.Namespace) -> list:
    """Run generation; returns one `pipeline.outputs.CaptionResult` per caption this process sampled.

    Under torchrun (WORLD_SIZE > 1) the captions are shared out across the ranks (caption i on rank
    i % world_size): each writes its captions' images with the seeds and folder names one process
    would have used, and rank 0 appends the run's record to OUTPUTS_DIR/generate-index.jsonl.
    Library errors and warnings name the flags (`flag_names`).
    """
    with flag_names():
        return _main(args)


def _main(args: argparse.Namespace) -> list:
    captions = _captions(args)
    try:
        sampling = SamplingConfig(filter_thres=args.filter_thres, top_p=args.top_p, temperature=args.temperature,
                                  cond_scale=args.cond_scale, filter_scope=args.filter_scope,
                                  cond_schedule=args.cond_schedule)
    except ValueError as e:  # checked before anything is loaded or sampled
        raise GenerationError(("--gentxt: " if args.gentxt else "") + str(e)) from None
    if args.negative_prompt is not None and args.cond_scale == 1.0:
        raise GenerationError("--negative_prompt only has an effect with guidance: add --cond_scale (e.g. 3)")
    if args.num_init_img_tokens is not None and args.img is None:
        raise GenerationError("--num_init_img_tokens needs --img")
    if args.mask is not None and args.img is None:
        raise GenerationError("--mask needs --img (the image whose codes the mask keeps)")
    if args.mask is not None and args.num_init_img_tokens is not None:
        raise GenerationError("give --num_init_img_tokens (keep the first codes) or --mask, not both")
    if args.canvas is not None:
        for flag, given in (("--compile", args.compile), ("--speculative", args.speculative not in (None, 1)),
                            ("--clip_path", args.clip_path or args.clip_model)):
            if given:
                raise GenerationError(f"--canvas does not combine with {flag} yet")
    elif args.img_offset != (0, 0):
        raise GenerationError("--img_offset places --img on a --canvas: add --canvas HxW")
    _check_variation_flags(args)
    if args.compile and not args.use_cache:
        raise GenerationError("--compile compiles the cached decode step: it cannot be used with --no_use_cache")
    if isinstance(args.speculative, int) and args.speculative < 1:
        raise GenerationError(f"--speculative must be a window of at least 1 code, got {args.speculative}")
    if args.speculative not in (None, 1) and not args.use_cache:
        raise GenerationError("--speculative verifies drafts with the cached step: it cannot be used with "
                              "--no_use_cache")
    if args.seed is not None:
        batch_seeds(args.seed, args.num_images, args.batch_size)  # --seed, --num_images and --batch_size, now
    env = DistEnv()
    if _launched_ranks() > 1:
        if args.device not in ("auto", "cpu", "cuda"):
            raise GenerationError(f"under torchrun --device must be auto, cpu or cuda (each rank uses GPU LOCAL_RANK), "
                                  f"got {args.device!r}")
        try:
            env = init_distributed(args.device)
        except TrainingError as e:  # e.g. --device cuda without a GPU
            raise GenerationError(e.template) from None
    try:
        return _run(args, captions, sampling, env)
    finally:
        env.close()


def _check_variation_flags(args: argparse.Namespace) -> None:
    """--variations_of, --strength and --variation_mode, before anything is loaded."""
    if args.variations_of is None:
        for flag, value in (("--strength", args.strength), ("--variation_mode", args.variation_mode)):
            if value is not None:
                raise GenerationError(f"{flag} needs --variations_of IMAGE (the image to vary)")
        return
    for flag, given in (("--img", args.img), ("--mask", args.mask), ("--num_init_img_tokens", args.num_init_img_tokens),
                        ("--gentxt", args.gentxt), ("--canvas", getattr(args, "canvas", None))):
        if given:
            raise GenerationError(f"--variations_of chooses the kept codes itself: it does not combine with {flag}")
    check_strength(0.5 if args.strength is None else args.strength, args.variation_mode or "suffix")


def variation_source(args: argparse.Namespace, model) -> tuple:
    """(pixels (1, c, H, W) or codes (1, I), what generation.json records of the source) of --variations_of."""
    value = args.variations_of
    if value.startswith("codes:"):
        try:
            codes = torch.tensor([[int(c) for c in value[len("codes:"):].split(",")]])
        except ValueError:
            raise GenerationError("--variations_of codes:C0,C1,... must list integers separated by commas") from None
        return codes, {"source": "codes", "source_sha256": hashlib.sha256(value.encode()).hexdigest(),
                       "source_codes": codes[0].tolist()}
    pixels = load_image(value, model.vae.image_size, model.vae.channels, what="variations_of")
    return pixels, {"source": os.path.basename(value), "source_sha256": file_sha256(value)}


def _pretrained_vae(args: argparse.Namespace):
    """The pretrained VAE --taming / --vqgan_* / --openai_* ask for (`pretrained.vae_from_flags`), or None."""
    try:
        return vae_from_flags(**vae_flags(args))
    except (ValueError, OSError) as e:
        raise GenerationError(str(e)) from None


def _run(args: argparse.Namespace, captions: list, sampling: SamplingConfig, env: DistEnv) -> list:
    seed = args.seed
    if seed is None:  # a fresh seed, the same on every rank
        seed = _shared(env, fresh_seed)
    batch_seeds(seed, args.num_images, args.batch_size)

    def check_folder() -> None:
        check_outputs_dir(args.outputs_dir)

    _shared(env, check_folder)
    path, is_demo = resolve_checkpoint(args.dalle_path)
    device = str(env.device) if env.distributed else args.device
    pipe = Pipeline.from_checkpoint(path, vae_path=args.vae_path, bpe_path=args.bpe_path, hug=args.hug,
                                    chinese=args.chinese, clip_path=args.clip_path, clip_model=args.clip_model,
                                    device=device, dtype=args.dtype, vae=_pretrained_vae(args), quantize=args.quantize)
    model, tokenizer = pipe.model, pipe.tokenizer
    # every caption (and the negative one) is checked before the first image is sampled
    pipe.tokenize([c for c in captions if c is not None] + ([args.negative_prompt] if args.negative_prompt is not None else []))
    img = mask = None
    if args.img is not None:
        img = load_image(args.img, model.vae.image_size, model.vae.channels)
    if args.mask is not None:
        mask = load_mask(args.mask, model.vae.image_size)
    source, source_info = (None, None) if args.variations_of is None else variation_source(args, model)
    strength = 0.5 if args.strength is None else args.strength

    def sample(caption: str, **kwargs):  # an ordinary run, or variations of --variations_of (no --img / --mask)
        if source is None:
            return pipe.generate(caption, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("img", "num_init_img_tokens", "mask")}
        out = pipe.variations(source, kwargs.pop("num_images"), strength, caption=caption,
                              mode=args.variation_mode or "suffix", **kwargs)
        out.settings["variation"].update({k: v for k, v in source_info.items() if k != "source_codes"})
        return out

    # folder names as one process would give them (planned on rank 0; with --gentxt the captions are sampled)
    planned = None if args.gentxt else _shared(env, lambda: plan_run_dirs(args.outputs_dir, captions))

    # one bar over the images, the codes of the current batch as its postfix; none when stderr is not a
    # terminal (a pipe or a log file gets the one line per caption below, not carriage returns)
    progress = not args.no_progress and env.is_main and sys.stderr.isatty()
    loaded = pipe.checkpoint
    run_info = {
        "checkpoint": {"path": os.path.abspath(path), "sha256": file_sha256(path), "demo": is_demo,
                       "source": loaded.source, "written_by_version": loaded.package_version},
        "vae_path": os.path.abspath(args.vae_path) if args.vae_path else None,
        "clip_path": os.path.abspath(args.clip_path) if args.clip_path else None,
        "clip_model": args.clip_model,
        "reranker": pipe.clip.describe() if pipe.clip is not None else None,
        "tokenizer": type(tokenizer).__name__,
        "img_path": os.path.abspath(args.img) if args.img else None,
        "variations_of": None if source_info is None else dict(
            source_info, path=os.path.abspath(args.variations_of) if "source" in source_info else None),
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "quantize": pipe.quantize,
    }
    if args.seed is None and env.is_main:
        print(f"seed: {seed}")

    mine = [i for i in range(len(captions)) if i % env.world_size == env.rank]
    results, error = [], None
    total = args.num_images * len(mine)
    bar = tqdm(total=total, desc="images", unit="img", disable=not progress)
    show_codes = _postfix_codes(bar) if progress else None
    if args.compile and env.is_main:
        print(f"compiling the decode step (--compile {args.compile}): a one-off wait of seconds to a minute",
              flush=True)
    start = time.perf_counter()
    try:
        for i in mine:
            prompt = captions[i]
            info = dict(run_info, gentxt=args.gentxt)
            caption = prompt
            if args.gentxt:
                try:  # the image sampling settings continue the caption, as in DALLE-pytorch
                    _, texts = generate_texts(model, tokenizer, prompt, sampling, use_cache=args.use_cache,
                                              generator=torch.Generator().manual_seed(seed))
                except ValueError as e:  # a bad prompt: one error line, no traceback
                    raise GenerationError(f"--gentxt: {e}") from None
                caption = texts[0].strip()
                info["gentxt_prompt"] = prompt
                tqdm.write(f"generated caption: {caption!r}")
            generated = sample(
                caption, num_images=args.num_images, seed=seed, batch_size=args.batch_size, sampling=sampling,
                negative_prompt=args.negative_prompt, img=img, num_init_img_tokens=args.num_init_img_tokens, mask=mask,
                use_cache=args.use_cache, compile=args.compile or False, speculative=args.speculative,
                pack_weights=False if args.no_pack_weights else None, on_batch=bar.update, callback=show_codes,
                callback_steps=4, **({} if args.canvas is None else {"canvas": args.canvas, "img_offset": args.img_offset}))
            generated.settings["img"] = os.path.basename(args.img) if args.img else None
            generated.settings["mask"] = os.path.basename(args.mask) if args.mask else None
            folder = (make_run_dir(args.outputs_dir, caption) if planned is None
                      else create_run_dir(args.outputs_dir, planned[i], caption))
            result = save_outputs(folder, generated, seed=seed, run_info=info,
                                  record_extra={"use_cache": args.use_cache, "compile": args.compile or False,
                                                "pack_weights": not args.no_pack_weights})
            tqdm.write(f"{caption!r}: {len(result.files)} images in {result.folder}")
            results.append((i, result))
    except (GenerationError, OSError) as e:
        if not env.distributed:
            raise
        error = f"rank {env.rank}: {e}"
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    done = env.all_gather_object(([(i, r.folder.name, [p.name for p in r.files], r.seeds) for i, r in results],
                                  error, elapsed))
    errors = [e for _, e, _ in done if e is not None]
    if errors:
        raise GenerationError("; ".join(errors))
    if env.is_main:
        count = args.num_images * len(captions)
        seconds = max(e for _, _, e in done)
        entries = sorted((entry + (rank,) for rank, (entries, _, _) in enumerate(done) for entry in entries))
        append_index(args.outputs_dir, {
            "seed": seed, "world_size": env.world_size, "images": count, "seconds": round(seconds, 4),
            "captions": [{"caption": captions[i] if captions[i] is not None else "(generated)", "folder": folder,
                          "files": files, "seeds": seeds, "rank": rank} for i, folder, files, seeds, rank in entries],
            "checkpoint": run_info["checkpoint"]["sha256"], "settings": sampling.to_dict(),
        })
        ranks = f" on {env.world_size} processes" if env.distributed else ""
        print(f"done: {count} images in {seconds:.2f} s ({count / seconds:.2f} images/s){ranks} on "
              f"{pipe.device.type} {args.dtype}")
    # the ranks leave together: a rank that tears down its gloo group while another still talks to it
    # (rank 0 writing the index) can abort at exit ("terminate called without an active exception")
    env.barrier()
    return [r for _, r in results]


def cli(argv=None) -> int:
    """The command line: parse `argv` (default sys.argv), generate; an error is one line and exit status 2."""
    args = parse_args(argv)
    try:
        with one_line_warnings(), flag_errors():
            main(args)
    except (GenerationError, CheckpointError, OSError, ImportError) as e:  # OSError: files, folders, a full disk
        print(f"{prog_name('dalle-generate')}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
