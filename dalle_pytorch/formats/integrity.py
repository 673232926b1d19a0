"""SHA-256 digests that tie a checkpoint's header to its tensors.

Some config values change no parameter shape (`shift_tokens`, `attn_types` between shape-equal
patterns, `stable`, a VAE's `image_size` or `temperature`): a file whose header was edited would
load and silently draw wrong images.  `save` therefore stores, under the `integrity` metadata key,
the SHA-256 of every other metadata entry and of every tensor (name, dtype, shape and bytes), and
`load_checkpoint` recomputes them: a mismatch is a CheckpointError naming what differs.

This detects damage and edits, not forgery: anyone can recompute the digests of an edited file (the
loader's other checks, strict shapes and size limits, hold whatever the digests say).
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import torch

from dalle_pytorch.errors import CheckpointError

__all__ = ["INTEGRITY_KEY", "integrity_record", "check_header", "check_tensors"]

INTEGRITY_KEY = "integrity"
_ALGORITHM = "sha256"
_FEW = 5


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(name: str, t: torch.Tensor) -> str:
    """SHA-256 of a tensor's name, dtype, shape and bytes (in memory order of a contiguous copy)."""
    h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def integrity_record(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The JSON stored under INTEGRITY_KEY for a file with metadata `header` and `tensors`."""
    return json.dumps({
        "algorithm": _ALGORITHM,
        "metadata": {k: _sha(v.encode("utf-8")) for k, v in sorted(header.items())},
        "tensors": {k: tensor_digest(k, t) for k, t in sorted(tensors.items())},
    })


def _record(path: str, meta: dict[str, str]) -> Optional[dict]:
    raw = meta.get(INTEGRITY_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint's integrity record is not valid JSON ({e})") from e
    if (not isinstance(record, dict) or record.get("algorithm") != _ALGORITHM
            or not isinstance(record.get("metadata"), dict) or not isinstance(record.get("tensors"), dict)):
        raise CheckpointError(f"{path}: the checkpoint's integrity record is damaged")
    return record


def check_header(path: str, meta: dict[str, str]) -> bool:
    """Verify the metadata entries against the stored digests (before anything is built from them).

    Returns False for a file written before digests were stored (nothing to verify).
    """
    record = _record(path, meta)
    if record is None:
        return False
    stored = record["metadata"]
    present = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    changed = sorted(k for k in present.keys() & stored.keys() if _sha(present[k].encode("utf-8")) != stored[k])
    added, removed = sorted(present.keys() - stored.keys()), sorted(stored.keys() - present.keys())
    if changed or added or removed:
        what = "; ".join(part for part in (
            f"changed: {', '.join(changed)}" if changed else "",
            f"added: {', '.join(added)}" if added else "",
            f"removed: {', '.join(removed)}" if removed else "") if part)
        raise CheckpointError(f"{path}: the checkpoint's metadata does not match the SHA-256 digests written when it "
                              f"was saved ({what}); the header was edited or damaged after saving. Nothing was loaded.")
    return True


def check_tensors(path: str, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Verify every tensor against its stored digest (names, dtypes, shapes and bytes)."""
    record = _record(path, meta)
    if record is None:
        return
    stored = record["tensors"]
    differ = sorted(k for k in tensors.keys() & stored.keys() if tensor_digest(k, tensors[k]) != stored[k])
    differ += sorted(tensors.keys() ^ stored.keys())
    if differ:
        shown = ", ".join(differ[:_FEW]) + (f", ... ({len(differ) - _FEW} more)" if len(differ) > _FEW else "")
        raise CheckpointError(f"{path}: {len(differ)} tensors do not match the SHA-256 digests written when the "
                              f"checkpoint was saved ({shown}); the file is damaged. Nothing was loaded.")
