"""The image server: continuous batching (`scheduler`, `batch`: torch only), the HTTP API (`app`:
FastAPI, the `[serve]` extra) and its page (`static/`).  Run it with `python -m dalle_pytorch.serve`.

Nothing is imported here, so `import dalle_pytorch.serve.scheduler` never needs FastAPI.
"""
