"""Training log-probs read the logits as each model's own forward finishes them: Gemma 2 caps
them, Granite divides them, Cohere multiplies them. Otherwise every KTO/DPO reward on those
families would be computed from logits the model never produces."""

from __future__ import annotations

import pytest
import torch

from thumbs.tokenize import collate, pack
from thumbs.train.logprobs import completion_logps

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 0.5}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 3.0}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_completion_logps_equal_the_models_own_logits(family, layout):
    import transformers

    name, cls, extra = FAMILIES[family]
    shape = dict(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)  # fmt: skip
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, name)(**shape, **extra)).eval()
    seqs = [([3, 5, 7, 9, 11, 13], 3), ([4, 6, 8, 10], 2)]
    expected = []
    with torch.no_grad():
        for ids, start in seqs:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            expected.append(sum(float(logits[t - 1, ids[t]]) for t in range(start, len(ids))))
        batch = (pack if layout == "packed" else collate)(seqs, 0)
        got, counts = completion_logps(model, **batch, chunk_size=2)
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert counts.tolist() == [3, 2]
