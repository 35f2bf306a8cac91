"""Makes tests/data/dcl.json: lightly's DCLLoss (decoupled contrastive loss, Yeh et al. 2022) on
a few random pairs of projections at several temperatures, with its gradient with respect to
the projections, for the contrastive task's DCL (`ops::dcl`, tests/losses.rs).

    python scripts/dcl_fixture.py tests/data/dcl.json     # needs lightly and torch

Layout as tests/data/nt_xent.json: z1 (N, D) the first views, z2 (N, D) the second views; the
loss is the mean over all 2N anchors (lightly averages its two directions), and grad_z1,
grad_z2 are ∂loss/∂z1 and ∂loss/∂z2.
"""
import json
import sys

import lightly
import torch
from lightly.loss import DCLLoss

torch.manual_seed(0)
cases = []
for n, d, tau in [(2, 4, 0.5), (4, 8, 0.2), (6, 16, 0.1), (8, 5, 1.0)]:
    z1 = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    loss = DCLLoss(temperature=tau)(z1, z2)
    loss.backward()
    cases.append(
        {
            "temperature": tau,
            "z1": z1.detach().tolist(),
            "z2": z2.detach().tolist(),
            "loss": loss.item(),
            "grad_z1": z1.grad.tolist(),
            "grad_z2": z2.grad.tolist(),
        }
    )
json.dump(
    {
        "about": "DCL over 2N views (rows z1 then z2; the positive of i is i+N mod 2N, left out of "
        "the denominator with i itself); loss: mean over all 2N anchors; reference: lightly "
        f"{lightly.__version__} DCLLoss (weight_fn None), torch {torch.__version__}, float64",
        "cases": cases,
    },
    open(sys.argv[1], "w"),
    indent=1,
)
