"""Merging baselines (mergekit as a library) against an independent computation of mergekit 0.1.5's
definitions, on small random tensors and on a tiny model, at several densities and unequal weights, plus
hand-checked cases of the conventions that differ from other tools (floor(d·n) kept entries, L1-norm DARE
rescale, dare_ties without normalisation)."""

from __future__ import annotations

import math

import pytest
import torch

from tamperlab.fingerprints import merging as M


def reference_merge(base, models, weights, method, density, scale=1.0, normalize=None, seed=0):
    """mergekit 0.1.5's definitions written out (generalized_task_arithmetic.py + sparsify.py): per tensor,
    per model in order, magnitude top-k with k = max(1, floor(d·n)) or a Bernoulli(d) mask with L1 rescale;
    weights applied before the sign election (sum ≥ 0 → +); divide by the agreeing (or all) weights only
    when normalize (default: ties yes, the others no)."""
    if normalize is None:
        normalize = method == "ties"
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = {}
    for k, b in base.items():
        if not torch.is_floating_point(b):
            out[k] = b.clone()
            continue
        deltas = []
        for m in models:
            d = m[k].double() - b.double()
            if method == "ties" and density < 1:
                keep = max(1, math.floor(density * d.numel()))
                mask = torch.zeros(d.numel(), dtype=d.dtype)
                mask[d.abs().flatten().argsort(descending=True)[:keep]] = 1
                d = d * mask.reshape(d.shape)
            elif method.startswith("dare") and density < 1:
                mask = torch.bernoulli(torch.full(d.shape, density, dtype=torch.float32)).double()
                masked = d * mask
                before, after = d.abs().sum(), masked.abs().sum()
                d = masked * (before / after) if before >= 1e-7 and after >= 1e-7 else masked
            deltas.append(d)
        w = torch.tensor(weights, dtype=torch.float64).reshape(-1, *([1] * b.dim()))
        dw = torch.stack(deltas) * w
        if method in ("ties", "dare_ties"):
            elected = torch.where(dw.sum(0) >= 0, 1.0, -1.0).to(dw.dtype)
            agree = (torch.sign(dw) == elected).to(dw.dtype)
            num, den = (dw * agree).sum(0), (w * agree).sum(0)
            den = torch.where(den == 0, torch.ones_like(den), den)
        else:
            num, den = dw.sum(0), w.sum(0)
            den = torch.where(den.abs() < 1e-8, torch.ones_like(den), den)
        merged = num / den if normalize else num
        out[k] = (b.double() + scale * merged).to(b.dtype)
    torch.random.set_rng_state(gen_state)
    return out


def _small_models(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (3, 7)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base["step"] = torch.tensor(7)
    models = [{k: (v + torch.randn(v.shape, generator=g) if torch.is_floating_point(v) else v + i + 1)
               for k, v in base.items()} for i in range(3)]
    return base, models


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("density", [0.3, 0.5, 0.7])
def test_mergekit_equals_reference_on_small_tensors(method, density):
    base, models = _small_models()
    weights = [0.2, 0.5, 1.3]  # unequal
    got = M.merge_state_dicts(base, models, weights, method, density, scale=0.8, seed=3)
    ref = reference_merge(base, models, weights, method, density, scale=0.8, seed=3)
    for k in base:
        assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=0), (method, density, k)
    assert int(got["step"]) == 7  # non-float tensors come from the base


@pytest.mark.parametrize("method,density", [("ties", 0.3), ("dare_ties", 0.7), ("dare_linear", 0.5)])
def test_mergekit_equals_reference_on_a_tiny_model(tiny_model, method, density):
    model, _ = tiny_model
    # the decoder blocks (the 49k-row embedding only makes the sort slow, it tests nothing more)
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if "embed" not in k and "lm_head" not in k}
    g = torch.Generator().manual_seed(1)
    models = [{k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    got = M.merge_state_dicts(base, models, [0.7, 0.4], method, density, seed=5)
    ref = reference_merge(base, models, [0.7, 0.4], method, density, seed=5)
    worst = max((got[k] - ref[k]).abs().max().item() for k in base)
    assert worst < 1e-5


def test_task_arithmetic_is_weighted_sum_of_task_vectors():
    base = {"w": torch.tensor([1.0, 2.0, 3.0]), "step": torch.tensor(7)}
    a = {"w": torch.tensor([2.0, 2.0, 5.0]), "step": torch.tensor(1)}
    b = {"w": torch.tensor([1.0, 0.0, 3.0]), "step": torch.tensor(2)}
    out = M.merge_state_dicts(base, [a, b], [0.5, 1.0], "task_arithmetic", scale=2.0)
    # base + 2 * (0.5*[1,0,2] + 1*[0,-2,0]) = [1,2,3] + [1,-4,2]
    assert torch.allclose(out["w"], torch.tensor([2.0, -2.0, 5.0]))
    assert int(out["step"]) == 7


def test_ties_keeps_floor_of_density_times_n_and_normalises_by_agreeing_weights():
    z = {"w": torch.zeros(5)}
    d = {"w": torch.tensor([5.0, -4.0, 3.0, 2.0, 1.0])}
    # 0.3·5 = 1.5 → floor 1 entry kept (round would keep 2); 0.7·5 = 3.5 → 3 (round: 4)
    assert M.merge_state_dicts(z, [d], [1.0], "ties", 0.3)["w"].tolist() == [5.0, 0, 0, 0, 0]
    assert M.merge_state_dicts(z, [d], [1.0], "ties", 0.7)["w"].tolist() == [5.0, -4.0, 3.0, 0, 0]
    # two models, weights 0.25 / 0.75: entry 0 both positive → (0.25·4 + 0.75·2)/(0.25+0.75) = 2.5;
    # entry 1 opposite signs, weighted sum 0.25·(-4) + 0.75·2 = 0.5 > 0 → only the + side: 0.75·2/0.75 = 2
    e1, e2 = {"w": torch.tensor([4.0, -4.0])}, {"w": torch.tensor([2.0, 2.0])}
    out = M.merge_state_dicts({"w": torch.zeros(2)}, [e1, e2], [0.25, 0.75], "ties", 1.0)
    assert torch.allclose(out["w"], torch.tensor([2.5, 2.0]))
    # dare_ties at density 1 is the same election *without* normalisation (mergekit's default false)
    out = M.merge_state_dicts({"w": torch.zeros(2)}, [e1, e2], [0.25, 0.75], "dare_ties", 1.0)
    assert torch.allclose(out["w"], torch.tensor([2.5, 1.5]))
    out = M.merge_state_dicts({"w": torch.zeros(2)}, [e1, e2], [0.25, 0.75], "dare_ties", 1.0, normalize=True)
    assert torch.allclose(out["w"], torch.tensor([2.5, 2.0]))


def test_dare_rescales_to_keep_the_l1_norm_and_is_reproducible():
    z = {"w": torch.zeros(2000)}
    d = {"w": torch.linspace(-3, 3, 2000)}
    out = M.merge_state_dicts(z, [d], [1.0], "dare_linear", 0.3, seed=0)["w"]
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.04
    # L1 norm preserved exactly (mergekit's rescale), not an expectation-preserving 1/density factor
    assert out.abs().sum().item() == pytest.approx(d["w"].abs().sum().item(), rel=1e-5)
    factor = (out[kept] / d["w"][kept]).unique()
    assert torch.allclose(factor, factor[0].expand_as(factor)) and abs(factor[0].item() - 1 / 0.3) > 1e-3
    before = torch.random.get_rng_state()
    again = M.merge_state_dicts(z, [d], [1.0], "dare_linear", 0.3, seed=0)["w"]
    assert torch.equal(out, again) and torch.equal(before, torch.random.get_rng_state())
    assert not torch.equal(out, M.merge_state_dicts(z, [d], [1.0], "dare_linear", 0.3, seed=1)["w"])


def test_merge_rejects_mismatched_architectures():
    with pytest.raises(ValueError, match="same architecture"):
        M.merge_state_dicts({"w": torch.zeros(3)}, [{"w": torch.zeros(4)}], [1.0], "ties")
    with pytest.raises(ValueError, match="unknown merge method"):
        M.merge_state_dicts({"w": torch.zeros(3)}, [{"w": torch.zeros(3)}], [1.0], "slerp")  # type: ignore[arg-type]
