"""The optimizer ftkit trains with: fused AdamW (the fast kernel on CPU as on CUDA) taking the steps the textbook
one-parameter-at-a-time AdamW takes, with weight decay only on matrices."""

from __future__ import annotations

import torch

from ftkit.training.loop import make_optimizer


def test_fused_adamw_steps_like_the_plain_one_and_skips_decay_on_vectors():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    model[0].weight.requires_grad_(False)  # frozen: not optimized
    initial = [p.detach().clone() for p in model.parameters()]
    plain = [p.detach().clone().requires_grad_(p.requires_grad) for p in model.parameters()]
    matrices = [q for p, q in zip(model.parameters(), plain) if p.requires_grad and p.ndim >= 2]
    vectors = [q for p, q in zip(model.parameters(), plain) if p.requires_grad and p.ndim < 2]
    reference = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                  lr=0.05, foreach=False)
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.1)
    assert optimizer.defaults["fused"] and sum(len(g["params"]) for g in optimizer.param_groups) == 5
    for step in range(5):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        for params, opt in ((list(model.parameters()), optimizer), (plain, reference)):
            out = torch.nn.functional.linear(x, params[0], params[1])
            out = torch.nn.functional.layer_norm(out, (16,), params[2], params[3])
            torch.nn.functional.linear(out, params[4], params[5]).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), plain):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial)]
    assert moved == [False, True, True, True, True, True]  # the frozen weight stayed
