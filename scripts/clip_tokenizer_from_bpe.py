"""Write CLIP's tokenizer files (vocab.json, merges.txt) from OpenAI's published BPE merges.

The hub is unreachable, but the merge list CLIP was trained with ships inside the
``open_clip_torch`` wheel as ``bpe_simple_vocab_16e6.txt.gz``. CLIP's own ``SimpleTokenizer``
derives its vocabulary from that file in a fixed order; this reproduces it in the Hugging Face
format, so single-file SDXL checkpoints (which carry no tokenizer) tokenize exactly as upstream.

Usage: python scripts/clip_tokenizer_from_bpe.py BPE_GZ OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

MERGES_USED = 49152 - 256 - 2  # CLIP uses the first 48,894 merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def main(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES_USED + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(merge) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
