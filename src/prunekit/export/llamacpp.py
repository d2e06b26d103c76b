"""Running a GGUF file in llama.cpp itself (through llama-cpp-python, an optional dependency), for checks.

The tests (``tests/test_gguf_llamacpp.py``) and ``benchmarks/gguf_llamacpp.py`` compare llama.cpp's logits
on prunekit's files with the pruned PyTorch model's; nothing else in prunekit runs llama.cpp.

:class:`LlamaCppModel` loads a file with llama.cpp's extra buffer types off (``--no-repack`` in llama.cpp's
tools). On CPUs with AMX, llama.cpp moves Q4_0/Q4_1/Q8_0 and K-quant weights into its AMX buffer type; the
llama-cpp-python 0.3.36 build compiled here by GCC 12 faults in that path's first matrix product (GCC 12's
``_tile_loadconfig`` declares an 8-byte operand, so the stores of the 64-byte tile configuration are dropped
and ``ldtilecfg``/``tilezero`` trap), for any quantized file, llama.cpp's own quantizations and the source
SmolLM2 Q4_1 included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prunekit.core.errors import PrunekitError


class LlamaCppModel:
    """A GGUF loaded by llama.cpp through llama-cpp-python (imported here: an optional dependency), for checks.

    Loaded with llama.cpp's extra buffer types off (its tools' ``--no-repack``), which keeps quantized
    weights out of the AMX path that faults on this project's machine (module docstring), and with its
    tensor data checked. ``logits(ids)`` runs one batch in a fresh context. Use it as a context manager.
    """

    def __init__(self, path: str | Path, n_threads: int = 1):
        import llama_cpp

        quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python's log callback prints what passes this level
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        self._lib, self.path, self.n_threads = llama_cpp, Path(path), n_threads
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False
        params.check_tensors = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise PrunekitError(f"llama.cpp could not load '{path}'.", f"Run llama-cli -m {path} to see its log.")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))

    def logits(self, ids: list[int]) -> np.ndarray:
        """llama.cpp's logits ``[len(ids), vocab]`` at every position of ``ids``."""
        lib = self._lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max(256, len(ids))
        cparams.n_batch = cparams.n_ubatch = len(ids)
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        ctx = lib.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise PrunekitError(f"llama.cpp could not make a context for '{self.path}'.", "Run llama-cli on it to see its log.")
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = int(token), i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(ids)
            status = lib.llama_decode(ctx, batch)
            if status != 0:
                raise PrunekitError(f"llama.cpp's decode of '{self.path}' returned {status}.", "Run llama-cli on it to see its log.")
            return np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,)).copy()
                             for i in range(len(ids))])
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)

    def close(self) -> None:
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def llama_cpp_logits(path: str | Path, ids: list[int], n_threads: int = 1) -> np.ndarray:
    """llama.cpp's logits ``[len(ids), vocab]`` at every position of ``ids`` for the GGUF at ``path`` (:class:`LlamaCppModel`)."""
    with LlamaCppModel(path, n_threads) as model:
        return model.logits(ids)
