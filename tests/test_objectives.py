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


def test_what_each_objective_asks_of_the_loop():
    """The loop's cached log-prob sources each objective reads, and which side input each becomes (what online.py's
    per-name table did before): DPO's reference is the previous iterate (iterative DPO), SPPO's targets come from
    the scored records, ONPO reads its auxiliary chain."""
    ref, it, aux = (torch.full((4,), v) for v in (1.0, 2.0, 3.0))
    logps = {"ref": ref, "iterate": it, "aux": aux}
    data = [{"target": 0.25}, {"target": 0.5}, {"target": 1.0}, {"target": 0.0}]
    cases = [(INPO(ratio=1 / 3), {"ref", "iterate"}, {"ref_logps": ref, "anchor_logps": it}),
             (INPO(ratio=1.0), {"ref"}, {"ref_logps": ref}), (INPO(ratio=0.0), {"iterate"}, {"anchor_logps": it}),
             (IPO(), {"ref"}, {"ref_logps": ref}), (DPO(), {"iterate"}, {"ref_logps": it}),
             (ONPO(), {"aux"}, {"anchor_logps": aux}),
             (SPPO(), {"iterate"}, {"anchor_logps": it, "targets": torch.tensor([0.25, 0.5, 1.0, 0.0])})]
    for obj, sources, side in cases:
        assert obj.sources == sources, obj
        got = obj.side_inputs(logps, data)
        assert got.keys() == side.keys() and all(torch.equal(got[k], v) for k, v in side.items()), obj
    assert [cls.samples for cls in (INPO, ONPO, IPO, DPO, SPPO)] == ["pairs"] * 4 + ["scored"]
    assert [cls.aux_chain for cls in (INPO, ONPO, IPO, DPO, SPPO)] == [False, True, False, False, False]
    with pytest.raises(KeyError, match="reads the 'iterate' log-probs as ref_logps"):
        DPO().side_inputs({"ref": ref}, data)


def test_length_normalised_forms_divide_each_log_ratio_by_its_length():
    lp, ref, _, _ = _pairs()
    lengths = torch.arange(1, 11, dtype=torch.float64)
    r = (lp - ref) / lengths
    h = r[0::2] - r[1::2]
    torch.testing.assert_close(IPO(beta=0.1, length_normalize=True)(lp, ref, lengths=lengths),
                               ((h - 5.0) ** 2).mean())
    torch.testing.assert_close(DPO(beta=0.3, length_normalize=True)(lp, ref, lengths=lengths),
                               -torch.nn.functional.logsigmoid(0.3 * h).mean())
    zero = torch.zeros(10, dtype=torch.float64)  # a sequence without scored tokens divides by 1 (TRL's clamp)
    torch.testing.assert_close(IPO(length_normalize=True).margin(lp, ref, lengths=zero), IPO().margin(lp, ref))
    with pytest.raises(ValueError, match="needs lengths"):
        IPO(length_normalize=True)(lp, ref)
    assert repr(IPO(beta=0.2)) == "IPO(beta=0.2)" and "length_normalize=True" in repr(IPO(length_normalize=True))
