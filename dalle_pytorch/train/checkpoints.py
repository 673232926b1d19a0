"""The checkpoint pairs of a run folder: :class:`CheckpointManager` (pairs, the ``latest`` pointer,
``last.*`` links, rotation), :func:`weights_digest` and :func:`replicas_in_sync` (to compare the
weights the ranks of a distributed run ended with)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from typing import Optional

from dalle_pytorch.distributed import DistEnv
from dalle_pytorch.errors import TrainingError
from dalle_pytorch.formats.files import write_text
from dalle_pytorch.formats.images import tensor_bytes

LATEST_NAME = "latest"


@dataclasses.dataclass
class CheckpointPoint:
    step: int
    model: str
    state: str


class CheckpointManager:
    """Checkpoint pairs ``checkpoints/step_XXXXXXXX.{safetensors,state.pt}`` in a run folder.

    After each complete pair, ``latest`` (JSON: step, model, state) is replaced atomically and
    ``last.safetensors`` / ``last.state.pt`` are hard links (copies where links fail) to the pair.
    Rotation keeps the newest ``keep_last`` pairs (0 = keep all) up to the one just committed: it
    never deletes that pair, nor any pair newer than it (left by an earlier, longer run that was
    resumed from an older pair).  ``latest`` is read for its step only: the paths inside it must be
    that step's pair in ``checkpoints/``, or it is refused (a file never makes the loader follow a path).
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

    def _pointer_step(self) -> Optional[int]:
        """The step ``latest`` names, or None when there is no usable pointer; TrainingError when it
        names files other than that step's pair (outside the run folder, say)."""
        path = os.path.join(self.run_dir, LATEST_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            step = int(data["step"])
            named = (data["model"], data["state"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # damaged: fall back to scanning checkpoints/
        expected = tuple(os.path.relpath(p, self.run_dir) for p in self.pair(step))
        if tuple(os.path.normpath(str(n)) for n in named) != expected:
            raise TrainingError(f"{path} names {named[0]!r} and {named[1]!r}, not the checkpoint pair of step {step} "
                                f"in {self.dir}; refusing to follow it. Delete or fix {path}.")
        return step

    def candidates(self) -> list[CheckpointPoint]:
        """Pairs to resume from, best first: the one ``latest`` names, then the others newest first."""
        pairs = self._pairs()
        step = self._pointer_step()
        first = [p for p in pairs if p.step == step]
        return first + [p for p in reversed(pairs) if p.step != step]

    def latest(self) -> Optional[CheckpointPoint]:
        """The pair to resume from (the one ``latest`` names if it exists, else the newest one)."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def commit(self, step: int) -> None:
        """Point ``latest`` and ``last.*`` at the pair of ``step``; delete older pairs beyond ``keep_last``."""
        model, state = self.pair(step)
        pointer = {"step": step, "model": os.path.relpath(model, self.run_dir),
                   "state": os.path.relpath(state, self.run_dir)}
        write_text(os.path.join(self.run_dir, LATEST_NAME), json.dumps(pointer) + "\n")
        link_file(model, os.path.join(self.run_dir, "last.safetensors"))
        link_file(state, os.path.join(self.run_dir, "last.state.pt"))
        if self.keep_last:
            older = [p for p in self._pairs() if p.step <= step]
            for old in older[: -self.keep_last]:
                for path in (old.model, old.state):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)

    def discard(self, step: int) -> None:
        """Remove the (possibly half-written) pair of ``step``; ``latest`` never names it."""
        for path in self.pair(step):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def clean_temporary_files(self) -> list[str]:
        """Remove what interrupted writes left in the run folder: atomic writes' ``.NAME.XXXXXXXX.tmp``
        and links' ``NAME.PID.tmp``.  Returns the names removed."""
        removed = []
        for folder in (self.run_dir, self.dir):
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if _TEMPORARY.match(name) and os.path.isfile(os.path.join(folder, name)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                        removed.append(os.path.relpath(os.path.join(folder, name), self.run_dir))
        return sorted(removed)


# the temporary files of io.files.atomic_write (".NAME.<8 hex>.tmp") and of link_file ("NAME.<pid>.tmp")
_TEMPORARY = re.compile(r"^(\..+\.[0-9a-f]{8}|.+\.\d+)\.tmp$")


def link_file(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else copy), replacing it atomically."""
    import shutil

    with contextlib.suppress(OSError):
        if os.path.samefile(src, dst):
            return  # already linked (os.replace between two links to one inode would do nothing)
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
