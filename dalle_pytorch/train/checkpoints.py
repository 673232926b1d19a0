"""The checkpoint pairs of a run folder: :class:`CheckpointManager` (pairs, the ``latest`` pointer,
``last.*`` links, rotation), :func:`weights_digest` and :func:`replicas_in_sync` (to compare the
weights the ranks of a distributed run ended with)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Optional

from dalle_pytorch.images import tensor_bytes
from dalle_pytorch.io.files import write_text
from dalle_pytorch.train.distributed import DistEnv

LATEST_NAME = "latest"


@dataclasses.dataclass
class CheckpointPoint:
    step: int
    model: str
    state: str


class CheckpointManager:
    """Checkpoint pairs ``checkpoints/step_XXXXXXXX.{safetensors,state.pt}`` in a run folder.

    After each complete pair, ``latest`` (JSON: step, model, state) is replaced atomically and
    ``last.safetensors`` / ``last.state.pt`` are hard links (copies where links fail) to the pair;
    older pairs beyond ``keep_last`` (0 = keep all) are deleted.
    """

    def __init__(self, run_dir: str, keep_last: int = 3) -> None:
        self.run_dir = run_dir
        self.dir = os.path.join(run_dir, "checkpoints")
        self.keep_last = keep_last

    def pair(self, step: int) -> tuple[str, str]:
        stem = os.path.join(self.dir, f"step_{step:08d}")
        return stem + ".safetensors", stem + ".state.pt"

    def _pairs(self) -> list[CheckpointPoint]:
        out = []
        if os.path.isdir(self.dir):
            for name in os.listdir(self.dir):
                if name.startswith("step_") and name.endswith(".state.pt"):
                    try:
                        step = int(name[len("step_"): -len(".state.pt")])
                    except ValueError:
                        continue
                    model, state = self.pair(step)
                    if os.path.exists(model):
                        out.append(CheckpointPoint(step, model, state))
        return sorted(out, key=lambda p: p.step)

    def latest(self) -> Optional[CheckpointPoint]:
        """The newest complete pair (from ``latest``, else by scanning ``checkpoints/``)."""
        try:
            with open(os.path.join(self.run_dir, LATEST_NAME), encoding="utf-8") as f:
                data = json.load(f)
            point = CheckpointPoint(int(data["step"]), os.path.join(self.run_dir, data["model"]),
                                    os.path.join(self.run_dir, data["state"]))
            if os.path.exists(point.model) and os.path.exists(point.state):
                return point
        except (OSError, ValueError, KeyError, TypeError):
            pass
        pairs = self._pairs()
        return pairs[-1] if pairs else None

    def commit(self, step: int) -> None:
        """Point ``latest`` and ``last.*`` at the pair of ``step``; delete pairs beyond ``keep_last``."""
        model, state = self.pair(step)
        pointer = {"step": step, "model": os.path.relpath(model, self.run_dir),
                   "state": os.path.relpath(state, self.run_dir)}
        write_text(os.path.join(self.run_dir, LATEST_NAME), json.dumps(pointer) + "\n")
        link_file(model, os.path.join(self.run_dir, "last.safetensors"))
        link_file(state, os.path.join(self.run_dir, "last.state.pt"))
        if self.keep_last:
            for old in self._pairs()[: -self.keep_last]:
                for path in (old.model, old.state):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)


def link_file(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else copy), replacing it atomically."""
    import shutil

    tmp = f"{dst}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def replicas_in_sync(run_dir: str, env: DistEnv, state_dict: dict) -> bool:
    """Whether every rank holds the same weights: each writes replicas/rank<N>.sha256 of its
    `state_dict` (collective; the answer is the same on every rank)."""
    digest = weights_digest(state_dict)
    os.makedirs(os.path.join(run_dir, "replicas"), exist_ok=True)
    write_text(os.path.join(run_dir, "replicas", f"rank{env.rank}.sha256"), digest + "\n")
    return len(set(env.all_gather_object(digest))) == 1
