"""dalle-serve (python -m dalle_pytorch.serve) [--dalle_path demo] [--host 127.0.0.1] [--port 8000]: the image server.

Open http://127.0.0.1:8000/ for the page, /docs for the API.  Needs the `[serve]` extra
(pip install fastapi uvicorn, or this package's serve extra).  See docs/serving.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from dalle_pytorch.cli.flags import flag_names, prog_name
from dalle_pytorch.errors import CheckpointError, GenerationError
from dalle_pytorch.pipeline.outputs import file_sha256
from dalle_pytorch.pipeline.text_to_image import DEMO, DTYPES, Pipeline, resolve_checkpoint
from dalle_pytorch.serve.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPT_CHARS, DEFAULT_SEND_TIMEOUT, LOOPBACK_HOSTS
from dalle_pytorch.serve.server import DEFAULT_HEADER_TIMEOUT, DEFAULT_LIMIT_CONCURRENCY


#: --host values that bind to loopback only
LOOPBACK_BIND = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog_name("dalle-serve"),
                                description="Serve a DALLE over HTTP with continuous batching (docs/serving.md).")
    p.add_argument("--dalle_path", default=DEMO, help="DALLE checkpoint (ours or DALLE-pytorch's .pt); default: the demo model")
    p.add_argument("--vae_path", default=None, help="VAE checkpoint for DALLE-pytorch files saved without one")
    p.add_argument("--bpe_path", default=None, help="tokenizer file overriding the checkpoint's (as generate.py)")
    p.add_argument("--hug", action="store_true", help="--bpe_path is a HuggingFace `tokenizers` JSON file")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda:1'")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--quantize", default=None, choices=["int8", "int4"],
                   help="decode with int8 or int4 weights (batch-invariant: seeds reproduce; docs/generation.md)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max_rows", type=int, default=64,
                   help="capacity of the running batch in rows; a guided image takes two (default 64)")
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting to start before 429 (default 64)")
    p.add_argument("--max_images", type=int, default=16, help="the largest n of one request (default 16)")
    p.add_argument("--max_canvas_codes", type=int, default=None,
                   help="the most codes (H * W) of a request's canvas, a larger image than the model's trained grid "
                        "(default: 4 times the grid's, twice as wide and tall; 0: canvases refused)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    p.add_argument("--api_key", default=os.environ.get("DALLE_SERVE_API_KEY"),
                   help="require `Authorization: Bearer KEY` on /v1/ (default: $DALLE_SERVE_API_KEY; none: open)")
    p.add_argument("--allowed_hosts", nargs="+", default=None,
                   help="Host headers answered (default: the loopback names when --host is loopback, else any)")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"the largest request body; larger is a 413 before it is read (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--header_timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help=f"seconds a connection may take to send a request's head; then it is closed (slowloris) "
                        f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    p.add_argument("--limit_concurrency", type=int, default=DEFAULT_LIMIT_CONCURRENCY,
                   help=f"concurrent connections before new ones are answered 503 (default {DEFAULT_LIMIT_CONCURRENCY})")
    p.add_argument("--send_timeout", type=float, default=DEFAULT_SEND_TIMEOUT,
                   help=f"seconds a write of an event stream may wait for a client that stopped reading; then its "
                        f"request is cancelled and the connection closed (default {DEFAULT_SEND_TIMEOUT:g})")
    p.add_argument("--max_prompt_chars", type=int, default=DEFAULT_MAX_PROMPT_CHARS,
                   help=f"the longest prompt or negative prompt in characters (default {DEFAULT_MAX_PROMPT_CHARS})")
    p.add_argument("--preview_every", type=int, default=8, help="codes between streamed previews (default 8)")
    p.add_argument("--prefix_cache", type=int, default=64, help="prefilled captions kept (LRU; 0: off; default 64)")
    p.add_argument("--speculative", type=int, default=None, metavar="K",
                   help="speculative Jacobi decoding for every row: K drafted codes verified per step (as "
                        "generate.py --speculative)")
    p.add_argument("--shutdown_grace", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish at shutdown (default 30)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn  # noqa: F401  (the serve extra: checked before the model loads)

        from dalle_pytorch.serve.app import create_app
        from dalle_pytorch.serve.server import serve
    except ImportError as e:
        print(f"{prog_name('dalle-serve')}: error: {e} (pip install fastapi uvicorn: the serve extra)", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with flag_names():
            path, _ = resolve_checkpoint(args.dalle_path)
            pipe = Pipeline.from_checkpoint(path, vae_path=args.vae_path, bpe_path=args.bpe_path, hug=args.hug,
                                            device=args.device, dtype=args.dtype, quantize=args.quantize)
    except (GenerationError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"{prog_name('dalle-serve')}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(pipe, max_rows=args.max_rows, max_queue=args.max_queue, max_images=args.max_images,
                     timeout=args.timeout, preview_every=args.preview_every, prefix_cache_entries=args.prefix_cache,
                     shutdown_grace=args.shutdown_grace, dalle_path=args.dalle_path,
                     max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars, send_timeout=args.send_timeout,
                     checkpoint_sha256=file_sha256(path), speculative=args.speculative,
                     api_key=args.api_key, allowed_hosts=allowed_hosts(args), max_canvas_codes=args.max_canvas_codes)
    for line in startup_warnings(args):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    print(f"serving {args.dalle_path} on http://{args.host}:{args.port}/ (API description at /openapi.json)", flush=True)
    serve(app, host=args.host, port=args.port, log_level=args.log_level, shutdown_grace=args.shutdown_grace,
          header_timeout=args.header_timeout, limit_concurrency=args.limit_concurrency)
    return 0


def startup_warnings(args) -> list[str]:
    """What the server says at start about how it is exposed: bound beyond loopback without a key."""
    if args.host not in LOOPBACK_BIND and not args.api_key:
        return [f"serving on {args.host} without --api_key: anyone who can reach this port can use the server; set "
                "--api_key KEY (or $DALLE_SERVE_API_KEY), clients then send 'Authorization: Bearer KEY'"]
    return []


def allowed_hosts(args) -> list | None:
    """--allowed_hosts, or the loopback names for a loopback --host (DNS rebinding cannot reach it), or None."""
    if args.allowed_hosts is not None:
        return args.allowed_hosts
    return LOOPBACK_HOSTS if args.host in LOOPBACK_BIND else None


if __name__ == "__main__":
    sys.exit(main())
