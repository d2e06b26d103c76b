"""prunekit's GGUF files in a real llama.cpp (llama-cpp-python, which ``make test`` installs; without it
these tests fail, they do not skip).

Every ``--gguf-type`` of a depth plan (blocks and a whole layer removed) and of a width plan (heads and
MLP channels) is run by llama.cpp on a real text in SmolLM2's tokenizer, and its logits at every
position are compared with the pruned PyTorch model's: the same argmax everywhere and a max gap within
the type's bound. The models are tiny llamas with SmolLM2's 49152-token vocabulary, fitted to the text
for a few steps so that every next token is decisive (random weights predict near-ties).

Bounds, from the gaps measured with llama-cpp-python 0.3.36 on these two models (max |logit| ~17; top-2
margins >= 3.1): f32 0.013 / 0.033 (depth / width; llama.cpp keeps K and V in f16), f16 0.022 / 0.034,
bf16 0.14 / 0.18, q8_0 0.81 / 0.56 (llama.cpp also rounds the activations to q8_0 there).
"""

from __future__ import annotations

import ctypes

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from export_helpers import IDS, LLAMA_CPP_TEXT, fitted_pruned_tiny, pruned_tiny, smollm2_tokenizer
from prunekit.export import export
from prunekit.export.gguf_write import GGUF_TYPES, VERIFY_TOL
from prunekit.export.llamacpp import llama_cpp_logits
from prunekit.models.tiny import FAMILY_OVERRIDES

pytestmark = pytest.mark.llamacpp

BOUNDS = {"f32": 0.08, "f16": 0.08, "bf16": 0.5, "q8_0": 1.2}
PLANS = ("depth", "width")


@pytest.fixture(scope="module")
def text_ids():
    tok = smollm2_tokenizer()
    return tok, tok(LLAMA_CPP_TEXT)["input_ids"]


@pytest.fixture(scope="module")
def fitted(text_ids):
    tok, ids = text_ids
    models = {plan: fitted_pruned_tiny(plan, tok, ids) for plan in PLANS}
    logits = {}
    for plan, loaded in models.items():
        with torch.no_grad():
            logits[plan] = loaded.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    return models, logits


@pytest.mark.parametrize("gguf_type", GGUF_TYPES)
@pytest.mark.parametrize("plan", PLANS)
def test_llama_cpp_reads_every_type_with_the_pruned_models_logits(plan, gguf_type, fitted, text_ids, tmp_path):
    models, logits = fitted
    _, ids = text_ids
    ref = logits[plan]
    top2 = np.sort(ref, axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 2 * BOUNDS[gguf_type]  # decisive: a flip would be a real error
    path = tmp_path / f"{plan}.{gguf_type}.gguf"
    info = export(models[plan], "gguf", path, gguf_type=gguf_type)
    assert info["max_logit_diff"] <= VERIFY_TOL
    got = llama_cpp_logits(path, ids)
    assert got.shape == ref.shape == (len(ids), 49152)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(got - ref).max() <= BOUNDS[gguf_type]


def _quantize_with_llama_cpp(src, dst, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


@pytest.mark.parametrize("plan", PLANS)
def test_q8_0_tensors_are_what_llama_cpp_quantizes(plan, fitted, tmp_path):
    """prunekit's q8_0 file holds, tensor for tensor, the bytes llama.cpp's own quantizer makes from its f32 file
    (the width plan's 48-wide rows included: both fall back to f16)."""
    models, _ = fitted
    export(models[plan], "gguf", tmp_path / "f32.gguf", gguf_type="f32", verify=False)  # verified in the test above
    export(models[plan], "gguf", tmp_path / "q8_0.gguf", gguf_type="q8_0")
    _quantize_with_llama_cpp(tmp_path / "f32.gguf", tmp_path / "llama.q8_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)
    ours = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q8_0.gguf")).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "llama.q8_0.gguf")).tensors}
    assert ours.keys() == theirs.keys()
    types = set()
    for name, t in ours.items():
        assert t.tensor_type == theirs[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(theirs[name].data)), name
        types.add(t.tensor_type.name)
    assert types == ({"F32", "Q8_0", "F16"} if plan == "width" else {"F32", "Q8_0"})


@pytest.mark.parametrize("family, kind", [("llama", "blocks"), ("llama", "width"), ("mistral", "layers"), ("qwen2", "blocks"),
                                          ("phi3", "blocks"), ("phi3", "width"), ("granite", "blocks"), ("granite", "width")])
def test_llama_cpp_runs_each_family_with_the_same_next_tokens(family, kind, tmp_path):
    """Phi-3 with its fused rows split, Granite with its multipliers folded (FAMILY_OVERRIDES: none of them 1)."""
    loaded = pruned_tiny(family, kind, **FAMILY_OVERRIDES[family])
    path = tmp_path / "m.gguf"
    export(loaded, "gguf", path, gguf_type="f32")
    with torch.no_grad():
        ref = loaded.model(input_ids=IDS).logits[0].numpy()
    got = llama_cpp_logits(path, IDS[0].tolist())
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
