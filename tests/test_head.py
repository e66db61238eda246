"""The LM head's log-probs in vocabulary blocks: the same values and gradients as the logits a plain
matmul and log-softmax give, over blocks and row chunks that do not divide the sizes evenly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from thumbs.models import tiny_model, tiny_tokenizer
from thumbs.train import head as fused
from thumbs.train.logprobs import token_logps_at


def _direct(head: nn.Linear, hidden, targets):
    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _case(dtype=torch.float32, bias=True, vocab=53, width=12, n=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(width, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=gen, dtype=dtype))
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=gen, dtype=dtype))
    hidden = torch.randn(n, width, generator=gen, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[0], targets[1] = 0, vocab - 1  # the first and the last (narrower) block are both hit
    return head, hidden, targets


def test_gradients_are_exact_in_float64():
    head, hidden, targets = _case(torch.float64)
    inputs = (hidden, head.weight, head.bias)
    assert torch.autograd.gradcheck(
        lambda h, w, b: fused._HeadLogps.apply(h, w, b, targets, 4, 16, torch.float64), inputs
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows, block", [(4, 16), (3, 7), (100, 1024)])
def test_values_and_gradients_equal_the_full_logits(bias, rows, block):
    head, hidden, targets = _case(bias=bias)
    weights = torch.linspace(-2, 3, hidden.shape[0])
    expected = _direct(head, hidden, targets)
    (expected * weights).sum().backward()
    want = [t.grad.clone() for t in (hidden, head.weight, head.bias) if t is not None]
    for t in (hidden, head.weight, head.bias):
        if t is not None:
            t.grad = None
    got = fused.head_token_logps(head, hidden, targets, rows, block)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, w in zip((t.grad for t in (hidden, head.weight, head.bias) if t is not None), want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # evaluation's path: no autograd, the same numbers
        torch.testing.assert_close(fused.head_token_logps(head, hidden, targets, rows, block), got.detach())


def test_a_frozen_head_gets_no_gradient_and_passes_one_back():
    head, hidden, targets = _case()
    head.requires_grad_(False)
    fused.head_token_logps(head, hidden, targets, 4, 16).sum().backward()
    assert head.weight.grad is None and head.bias.grad is None
    expected = torch.autograd.grad(_direct(head, hidden, targets).sum(), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected, atol=1e-5, rtol=1e-5)


def test_under_bf16_autocast_the_head_runs_in_bf16_as_its_own_forward_does():
    head, hidden, targets = _case(bias=False, vocab=300, width=32, n=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _direct(head, hidden, targets)
        got = fused.head_token_logps(head, hidden, targets, 8, 64)
    full = fused.head_token_logps(head, hidden, targets, 8, 64)  # float32, outside autocast
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=0)
    assert (got - full).abs().max() > 1e-3  # really computed in bf16
    wanted = torch.autograd.grad(expected.sum(), (hidden, head.weight))
    for g, w in zip(torch.autograd.grad(got.sum(), (hidden, head.weight)), wanted):
        torch.testing.assert_close(g, w, atol=5e-2, rtol=2e-2)


def test_only_a_plain_head_takes_the_blocked_path():
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    assert fused.plain_head(model) is model.lm_head  # tied to the embeddings: still plain
    hooked = tiny_model(tokenizer)
    hooked.lm_head.register_forward_hook(lambda module, args, out: out)
    assert fused.plain_head(hooked) is None
    capped = tiny_model(tokenizer, final_logit_softcapping=30.0)
    assert fused.plain_head(capped) is None
    adapted = get_peft_model(tiny_model(tokenizer), LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    assert fused.plain_head(adapted.get_base_model()) is None
    hidden = torch.randn(5, model.config.hidden_size)
    targets = torch.randint(0, len(tokenizer), (5,))
    with torch.no_grad():  # the adapter's own forward is what the fallback computes
        torch.testing.assert_close(
            token_logps_at(adapted, hidden, targets),
            _direct(adapted.base_model.model.lm_head, hidden, targets),
        )
