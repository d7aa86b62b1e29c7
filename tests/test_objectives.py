import math

import pytest
import torch

from inpo.objectives import DPO, INPO, IPO, ONPO, SPPO, make_objective


def _pairs(p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2 * p, generator=g, dtype=torch.float64) * 3 for _ in range(4)]


def test_inpo_matches_formula():
    lp, ref, anc, _ = _pairs()
    obj = INPO(eta=0.01, ratio=0.25)
    d = lambda x: x[0::2] - x[1::2]  # noqa: E731
    expected = ((d(lp) - 0.25 * d(ref) - 0.75 * d(anc) - 1 / (2 * 0.01)) ** 2).mean()
    torch.testing.assert_close(obj(lp, ref, anc), expected)


def test_inpo_ratio_one_is_online_ipo():
    lp, ref, anc, _ = _pairs()
    torch.testing.assert_close(INPO(eta=0.2, ratio=1.0)(lp, ref, anc), IPO(beta=0.2)(lp, ref))
    # with ratio=1 the anchor is not needed; with ratio=0 the reference is not needed
    INPO(eta=0.2, ratio=1.0)(lp, ref)
    INPO(eta=0.2, ratio=0.0)(lp, anchor_logps=anc)


def test_onpo_ipo_dpo_sppo_formulas():
    lp, ref, anc, t = _pairs()
    d = lambda x: x[0::2] - x[1::2]  # noqa: E731
    torch.testing.assert_close(ONPO(eta=0.5)(lp, anchor_logps=anc), ((d(lp) - d(anc) - 0.25) ** 2).mean())
    torch.testing.assert_close(IPO(beta=0.1)(lp, ref), ((d(lp) - d(ref) - 5.0) ** 2).mean())
    z = 0.3 * (d(lp) - d(ref))
    torch.testing.assert_close(DPO(beta=0.3)(lp, ref), -torch.nn.functional.logsigmoid(z).mean())
    ls = DPO(beta=0.3, label_smoothing=0.1)(lp, ref)
    expected = (-(0.9) * torch.nn.functional.logsigmoid(z) - 0.1 * torch.nn.functional.logsigmoid(-z)).mean()
    torch.testing.assert_close(ls, expected)
    p_hat = torch.sigmoid(t)
    torch.testing.assert_close(SPPO(eta=0.5)(lp, anchor_logps=anc, targets=p_hat),
                               ((lp - anc - (p_hat - 0.5) / 0.5) ** 2).mean())


def test_gradient_of_inpo_loss():
    lp, ref, anc, _ = _pairs(p=3)
    lp.requires_grad_(True)
    obj = INPO(eta=0.1, ratio=0.5)
    obj(lp, ref, anc).backward()
    h = obj.margin(lp.detach(), ref, anc) - 5.0
    g = torch.zeros_like(lp)
    g[0::2], g[1::2] = 2 * h / 3, -2 * h / 3
    torch.testing.assert_close(lp.grad, g)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_eta(bad):
    with pytest.raises(ValueError, match="eta"):
        INPO(eta=bad)
    with pytest.raises(ValueError, match="eta"):
        ONPO(eta=bad)
    with pytest.raises(ValueError, match="beta"):
        IPO(beta=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_bad_ratio(bad):
    with pytest.raises(ValueError, match="ratio"):
        INPO(eta=0.1, ratio=bad)


def test_missing_and_misshaped_inputs():
    lp, ref, anc, _ = _pairs()
    with pytest.raises(ValueError, match="ref_logps"):
        IPO()(lp)
    with pytest.raises(ValueError, match="anchor_logps"):
        INPO()(lp, ref)
    with pytest.raises(ValueError, match="targets"):
        SPPO()(lp, anchor_logps=anc)
    with pytest.raises(ValueError, match="even"):
        DPO()(lp[:-1], ref[:-1])
    with pytest.raises(ValueError, match="ref_logps must have the shape"):
        IPO()(lp, ref[:-2])


def test_make_objective():
    assert make_objective("INPO", eta=0.1) == INPO(eta=0.1)
    with pytest.raises(ValueError, match="unknown objective 'xpo'"):
        make_objective("xpo")
