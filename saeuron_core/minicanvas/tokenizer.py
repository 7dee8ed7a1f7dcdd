"""The bundled model's tokenizer: a real ``CLIPTokenizer`` built from the project's own vocabulary.

CLIP's byte-level BPE needs ``vocab.json`` and ``merges.txt``. We write all 256 byte symbols
(alone and word-final) so any text tokenizes, plus one whole-word token for every word of the
MiniCanvas prompts, each reachable by left-to-right merges.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dataset import OBJECTS, STYLES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PROMPT_WORDS = ("an", "image", "of", "in", "style", "a", "the", ".", ",") + OBJECTS + STYLES


def _bytes_to_unicode() -> dict[int, str]:
    # Same table as CLIP / GPT-2: printable stand-ins for every byte.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def build_vocab(words=PROMPT_WORDS) -> tuple[dict[str, int], list[str]]:
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Tokenize the word with the merges so far, then merge what is left left-to-right. New
        # merges rank after all earlier ones, so earlier words still end as one token each.
        parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        token = parts[0]
        for nxt in parts[1:]:
            ranks[(token, nxt)] = len(merges)
            merges.append(f"{token} {nxt}")
            token = token + nxt
            vocab.setdefault(token, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    return vocab, merges


def write_tokenizer(folder: str | Path, model_max_length: int = 16):
    """Write a loadable CLIPTokenizer into ``folder`` and return it."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m.split(" ")) for m in merges],
        model_max_length=model_max_length,
        pad_token=EOS,
    )
    tok.save_pretrained(folder)
    return tok
