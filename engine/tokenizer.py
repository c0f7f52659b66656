"""Tokenisation for the ONNX path with the `tokenizers` library and the model's tokenizer.json.

Each text is tokenised once, untruncated, because the result reports rows longer than the model
reads (`truncated_rows`); the ids are then cut to `max_seq_length` keeping the final special token,
which is what the tokenizer's own truncation does for one sequence ([CLS] x [SEP], <s> x </s>).
tests/test_engine.py holds this to sentence-transformers' tokenisation, token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
from tokenizers import Encoding, Tokenizer

Ids = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Batch:
    """One forward pass: padded arrays, in the model's input names."""

    input_ids: Ids
    attention_mask: Ids
    token_type_ids: Ids


class TextTokenizer:
    def __init__(self, tokenizer_file: Path, max_seq_length: int, do_lower_case: bool) -> None:
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        # tokenizer.json may carry its own truncation and padding (all-MiniLM-L6-v2's: truncate
        # at 128, pad to a fixed 128); sentence-transformers truncates at max_seq_length and pads
        # to the longest row of a batch, so both are switched off and done here.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_seq_length = max_seq_length
        self._lower = do_lower_case
        self.pad_id = self._pad_id(tokenizer_file)

    def encode(self, texts: list[str]) -> tuple[list[Encoding], npt.NDArray[np.int64]]:
        """Encodings and each text's untruncated token count (special tokens included)."""
        if self._lower:
            texts = [t.lower() for t in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        counts = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        return encodings, counts

    def batch(self, encodings: list[Encoding]) -> Batch:
        """Pad (and truncate) a few encodings into one forward pass's arrays."""
        limit = self.max_seq_length
        width = min(limit, max(len(e.ids) for e in encodings))
        ids = np.full((len(encodings), width), self.pad_id, np.int64)
        mask = np.zeros((len(encodings), width), np.int64)
        types = np.zeros((len(encodings), width), np.int64)
        for row, enc in enumerate(encodings):
            seq, kinds = enc.ids, enc.type_ids
            if len(seq) > limit:  # keep the closing special token, as truncation does
                seq, kinds = seq[: limit - 1] + seq[-1:], kinds[: limit - 1] + kinds[-1:]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            types[row, : len(seq)] = kinds
        return Batch(ids, mask, types)

    def _pad_id(self, tokenizer_file: Path) -> int:
        names = ["[PAD]", "<pad>"]
        config = tokenizer_file.with_name("tokenizer_config.json")
        if config.is_file():
            pad = orjson.loads(config.read_bytes()).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if isinstance(pad, str):
                names.insert(0, pad)
        for name in names:
            found = self._tok.token_to_id(name)
            if found is not None:
                return int(found)
        return 0
