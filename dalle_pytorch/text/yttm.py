"""`YttmTokenizer`: a youtokentome (YTTM) BPE model file (`model.bpe`), encoded and decoded like
`youtokentome.BPE` 1.0.6 with its defaults, in pure Python (youtokentome itself is not needed: it is
unmaintained and hard to build; the results were checked against 1.0.6, `tests/fixtures/yttm/`).
`is_yttm_model(path)` tells a YTTM model file apart by its content."""
from __future__ import annotations

import heapq
import re
from pathlib import Path
from typing import Union

from dalle_pytorch.formats.files import read_bytes, regular_file
from dalle_pytorch.text.base import MAX_TOKENIZER_BYTES, BaseTokenizer, shorten

YTTM_SPACE = "\u2581"  # "▁": YTTM marks the start of every word with this character
_YTTM_SPECIAL_PIECES = ("<UNK>", "<PAD>", "<BOS>", "<EOS>")  # what decode writes for unk / pad / bos / eos
# YTTM splits words on the C-locale isspace() characters and on its own "▁" marker; nothing else (not
# U+00A0, U+0085, U+3000, ...) counts as a space.
_YTTM_WORD_SPLIT = re.compile("[ \t\n\v\f\r\u2581]+")
_YTTM_NUMBER = re.compile(r"-?[0-9]+")
_YTTM_HEADER = re.compile(rb"\A[ \t\r]*\d+[ \t]+\d+[ \t\r]*(\n|\Z)")
_YTTM_EXPECTED = (
    "expected the model file written by youtokentome.BPE.train: a first line 'N M', then N lines "
    "'codepoint id', M merge lines 'left right merged' and a last line 'unk_id pad_id bos_id eos_id'"
)


def is_yttm_model(path: Union[str, Path]) -> bool:
    """True when `path` is a file that starts like a youtokentome BPE model (first line: two integers).

    Only the first line is looked at, so a corrupted YTTM model still counts as one (and `YttmTokenizer`
    then says what is wrong with it). CLIP merges (`#version` header, or gzip) and JSON files do not.
    """
    try:
        with open(regular_file(path, "tokenizer file"), "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return bool(_YTTM_HEADER.match(head))


def _not_yttm(source: str, why: str) -> ValueError:
    return ValueError(f"{source} is not a valid youtokentome BPE model ({why}); {_YTTM_EXPECTED}")


def _parse_yttm_model(text: str, source: str):
    """Parse the text of a YTTM model file into (char2id, rules, (unk, pad, bos, eos))."""

    def bad(why: str) -> ValueError:
        return _not_yttm(source, why)

    fields = text.split()
    for field in fields:
        if not _YTTM_NUMBER.fullmatch(field):
            raise bad(f"found {shorten(field, 20)!r} where a number was expected")
    nums = [int(f) for f in fields]
    if len(nums) < 2:
        raise bad("the 'N M' header is missing")
    n_chars, n_rules = nums[0], nums[1]
    if n_chars < 1 or n_rules < 0:
        raise bad(f"bad header '{n_chars} {n_rules}'")
    expected = 2 + 2 * n_chars + 3 * n_rules + 4
    if len(nums) != expected:
        raise bad(f"the header '{n_chars} {n_rules}' needs {expected} numbers, the file has {len(nums)}")

    char2id: dict[str, int] = {}
    pos = 2
    for _ in range(n_chars):
        cp, idx = nums[pos], nums[pos + 1]
        pos += 2
        if not (0 <= cp < 0x110000) or 0xD800 <= cp <= 0xDFFF:
            raise bad(f"{cp} is not a unicode code point")
        if chr(cp) in char2id:
            raise bad(f"character {cp} is listed twice")
        char2id[chr(cp)] = idx
    rules = [tuple(nums[pos + 3 * i : pos + 3 * i + 3]) for i in range(n_rules)]
    specials = tuple(nums[-4:])  # unk, pad, bos, eos (the order YTTM writes them)

    unk_id = specials[0]
    vocab_size = n_chars + n_rules + sum(1 for s in specials if s != -1)
    if YTTM_SPACE not in char2id:
        raise bad("the word-start character '▁' (9601) is missing")
    if unk_id < 0:
        raise bad(f"unk_id is {unk_id}")
    taken = [s for s in specials if s != -1]
    known: set[int] = set()
    for idx in list(char2id.values()) + taken:
        if idx in known:
            raise bad(f"id {idx} is used twice")
        known.add(idx)
    for x, y, z in rules:
        if x not in known or y not in known or z in known:
            raise bad(f"merge rule '{x} {y} {z}' does not fit the ids defined before it")
        known.add(z)
    if known != set(range(vocab_size)):
        raise bad(f"the ids are not exactly 0..{vocab_size - 1}")
    return char2id, rules, specials


class YttmTokenizer(BaseTokenizer):
    """A youtokentome (YTTM) BPE model, read and applied in pure Python (youtokentome is not needed).

    Encodes and decodes exactly like `youtokentome.BPE` 1.0.6 with its defaults (ids, no BPE dropout,
    no bos / eos), which DALLE-pytorch's `YttmTokenizer` used:

    - text is split into words on ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r) and on "▁"; every
      word starts with the "▁" marker, so leading, trailing and repeated spaces leave no trace;
    - a run of characters missing from the model's alphabet becomes one `unk_id` token;
    - merges are applied lowest rule index first (leftmost occurrence first);
    - `decode` writes "▁" as a space (dropping the first one), and unk / pad / bos / eos as
      `<UNK>` / `<PAD>` / `<BOS>` / `<EOS>`; like DALLE-pytorch it drops 0 and `pad_tokens`.

    Args:
        bpe_path: the model file written by `youtokentome.BPE.train` (e.g. `model.bpe`).
        model_str: the text of such a file instead of a path (see `from_str`).
    """

    def __init__(self, bpe_path: Union[str, Path, None] = None, *, model_str: str | None = None):
        if model_str is not None:
            self.bpe_path = str(bpe_path) if bpe_path is not None else None
            source = "the YTTM model text"
        else:
            if bpe_path is None:
                raise ValueError("YttmTokenizer needs the path of a youtokentome BPE model file")
            path = Path(bpe_path)
            raw = read_bytes(path, "youtokentome BPE model file", MAX_TOKENIZER_BYTES)
            source = repr(str(path))
            try:
                model_str = raw.decode("ascii")
            except UnicodeDecodeError:
                why = "it is gzip-compressed" if raw[:2] == b"\x1f\x8b" else "it is not plain ASCII text"
                raise _not_yttm(source, why) from None
            self.bpe_path = str(path)

        self.model_str = model_str
        char2id, rules, specials = _parse_yttm_model(model_str, source)
        self.unk_id, self.pad_id, self.bos_id, self.eos_id = specials
        self.char2id = char2id
        self.space_id = char2id[YTTM_SPACE]
        self.vocab_size = len(char2id) + len(rules) + sum(1 for s in specials if s != -1)
        # (left id, right id) -> (rule index = priority, merged id); a later duplicate rule wins, like YTTM
        self.merges: dict[tuple[int, int], tuple[int, int]] = {(x, y): (i, z) for i, (x, y, z) in enumerate(rules)}

        pieces: dict[int, str] = {idx: ch for ch, idx in char2id.items()}
        for x, y, z in rules:
            pieces[z] = pieces[x] + pieces[y]
        self.pieces = pieces  # id -> subword with "▁" (not for special ids)
        self.special_pieces = {
            idx: name for idx, name in reversed(list(zip(specials, _YTTM_SPECIAL_PIECES))) if idx != -1
        }  # reversed: where ids coincide, unk wins (YTTM checks unk first)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_str(cls, model_str: str, path: str | None = None) -> "YttmTokenizer":
        """Build from the text of a YTTM model file (as stored by `describe()`)."""
        return cls(path, model_str=model_str)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one word (no spaces in it): "▁" + its characters, merged by rule priority."""
        # symbols: model ids, or negative placeholders, one per run of unknown characters
        symbols: list[int] = [self.space_id]
        unknown = 0
        for ch in word:
            idx = self.char2id.get(ch)
            if idx is not None:
                symbols.append(idx)
            elif symbols[-1] >= 0 or len(symbols) == 1:
                unknown -= 1
                symbols.append(unknown)
            # else: this character extends the run of unknown characters just seen

        n = len(symbols)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        alive = [True] * n
        merges = self.merges
        heap: list[tuple[int, int]] = []  # (rule index, left position)

        def push(pos: int) -> None:
            right = nxt[pos]
            if right != -1:
                rule = merges.get((symbols[pos], symbols[right]))
                if rule is not None:
                    heap.append((rule[0], pos))

        for pos in range(n - 1):
            push(pos)
        heapq.heapify(heap)
        while heap:
            rule_index, left = heapq.heappop(heap)
            right = nxt[left]
            if not alive[left] or right == -1:
                continue
            rule = merges.get((symbols[left], symbols[right]))
            if rule is None or rule[0] != rule_index:
                continue  # stale: this pair has changed since it was queued
            symbols[left] = rule[1]
            alive[right] = False
            after = nxt[right]
            nxt[left] = after
            if after != -1:
                prv[after] = left
            before = prv[left]
            if before != -1:
                rule_before = merges.get((symbols[before], symbols[left]))
                if rule_before is not None:
                    heapq.heappush(heap, (rule_before[0], before))
            if after != -1:
                rule_after = merges.get((symbols[left], symbols[after]))
                if rule_after is not None:
                    heapq.heappush(heap, (rule_after[0], left))

        out = [symbols[pos] for pos in range(n) if alive[pos]]
        # YTTM quirk: its merge list marks dead nodes with id 0, so a word's leading tokens whose id is 0
        # (possible only in models trained with pad_id=-1) are left out of the output.
        start = 0
        while start < len(out) and out[start] == 0:
            start += 1
        return tuple(self.unk_id if t < 0 else t for t in out[start:])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no padding, no bos / eos), as `youtokentome.BPE.encode` returns them."""
        text.encode("utf-8")  # like youtokentome: lone surrogates raise UnicodeEncodeError
        ids: list[int] = []
        cache = self._cache
        for word in _YTTM_WORD_SPLIT.split(text):
            if not word:
                continue
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(cache) < 100_000:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def id_to_subword(self, idx: int) -> str:
        """The subword of an id, with its "▁", or `<UNK>` / `<PAD>` / `<BOS>` / `<EOS>` for special ids."""
        idx = int(idx)
        if not 0 <= idx < self.vocab_size:
            raise ValueError(f"id must be in the range [0, vocab_size - 1] = [0, {self.vocab_size - 1}], got {idx}")
        if idx in self.special_pieces:
            return self.special_pieces[idx]
        return self.pieces[idx]

    def vocab(self) -> list[str]:
        """All subwords, indexed by id (like `youtokentome.BPE.vocab()`)."""
        return [self.id_to_subword(i) for i in range(self.vocab_size)]

    def _decode_ids(self, ids: list[int]) -> str:
        parts = []
        for idx in ids:
            piece = self.id_to_subword(idx)
            if idx not in self.special_pieces and piece.startswith(YTTM_SPACE):
                piece = " " + piece[1:]
            parts.append(piece)
        text = "".join(parts)
        return text[1:] if parts and parts[0].startswith(" ") else text

    def describe(self) -> dict:
        """{"type": "yttm", "path": <original path or None>, "model": <the model file's text>}."""
        return {"type": "yttm", "path": self.bpe_path, "model": self.model_str}
