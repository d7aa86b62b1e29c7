"""Tabular preference games and their exact duality gap (shared/ALGORITHMS.md, "Tabular testbed").

A game is a preference matrix ``P[y, y'] = P(y ≻ y')`` over ``n`` responses with ``P + Pᵀ = 1``
(so the diagonal is ½), or a stack ``[C, n, n]`` of them, one per prompt (context) with prompts
drawn uniformly. Policies are ``[n]`` (or ``[C, n]``) points of the simplex. Everything here is
numpy fp64 and exact: no sampling, no optimisation.

The symmetric game is J(π1, π2) = E_{y~π1, y'~π2} P(y ≻ y'), optionally KL-regularised:
J_τ(π1, π2) = J(π1, π2) − τ·KL(π1‖π_ref) + τ·KL(π2‖π_ref). Its Nash policy is the target of INPO
and ONPO; for τ > 0 it is the unique fixed point π ∝ π_ref · exp(P(y ≻ π)/τ).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "check_preference",
    "check_policy",
    "uniform",
    "win_rates",
    "duality_gap",
    "gap_curve",
    "best_response",
    "regularized_nash",
    "rock_paper_scissors",
    "cyclic_game",
    "style_game",
    "STYLE_CLASSES",
    "random_intransitive",
    "bradley_terry",
    "mixture",
    "make_game",
    "GAMES",
]

_ATOL = 1e-9


# --------------------------------------------------------------------------------------------- checks

def check_preference(P, *, name: str = "P") -> np.ndarray:
    """Return ``P`` as fp64 ``[C, n, n]`` (a single game gets C = 1) after checking it is a valid
    preference matrix: finite, entries in [0, 1], ``P + Pᵀ = 1`` (hence diagonal ½). ValueError otherwise."""
    arr = np.asarray(P, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] < 2:
        raise ValueError(f"{name} must be a square preference matrix [n, n] or a stack [C, n, n] with n >= 2, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got non-finite entries")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_ATOL or hi > 1 + _ATOL:
        raise ValueError(f"{name} entries are probabilities P(y ≻ y') and must lie in [0, 1], got range [{lo}, {hi}]")
    arr3 = arr[None] if arr.ndim == 2 else arr
    viol = np.abs(arr3 + np.swapaxes(arr3, -1, -2) - 1.0)
    if float(viol.max()) > 1e-8:
        c, i, j = np.unravel_index(int(viol.argmax()), viol.shape)
        where = f"[{c}, {i}, {j}]" if arr.ndim == 3 else f"[{i}, {j}]"
        raise ValueError(f"{name} must satisfy P + Pᵀ = 1 (P(y ≻ y') + P(y' ≻ y) = 1, diagonal ½); worst at "
                         f"{name}{where} = {arr3[c, i, j]:.6g} with its mirror {arr3[c, j, i]:.6g}")
    return np.clip(arr3, 0.0, 1.0)


def check_policy(pi, n: int, contexts: int = 1, *, name: str = "pi") -> np.ndarray:
    """Return ``pi`` as fp64 ``[C, n]`` after checking it lies on the simplex (entries >= 0, sum 1).
    A single ``[n]`` policy is broadcast to every context. ValueError naming ``name`` otherwise."""
    arr = np.asarray(pi, dtype=np.float64)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (contexts, arr.shape[0])).copy()
    if arr.shape != (contexts, n):
        raise ValueError(f"{name} must have shape [{n}] or [{contexts}, {n}] to match the game, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or float(arr.min()) < -_ATOL:
        raise ValueError(f"{name} must be a probability vector (finite, >= 0), got min {float(np.nanmin(arr))}")
    sums = arr.sum(-1)
    if np.abs(sums - 1.0).max() > 1e-6:
        raise ValueError(f"{name} must sum to 1 on the simplex, got sums {np.round(sums, 8).tolist()}")
    arr = np.clip(arr, 0.0, None)
    return arr / arr.sum(-1, keepdims=True)


def uniform(n: int, contexts: int = 1) -> np.ndarray:
    return np.full((contexts, n), 1.0 / n)


def _squeeze_like(out: np.ndarray, P) -> np.ndarray:
    return out[0] if np.ndim(P) == 2 else out


# ----------------------------------------------------------------------------------- game quantities

def win_rates(P, pi) -> np.ndarray:
    """r(y) = P(y ≻ π) = Σ_y' π(y')·P(y ≻ y'); shape of ``pi``."""
    P3 = check_preference(P)
    pi2 = check_policy(pi, P3.shape[-1], P3.shape[0])
    return _squeeze_like(np.einsum("cij,cj->ci", P3, pi2), P)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return float(tau)


def duality_gap(P, pi, *, tau: float = 0.0, pi_ref=None) -> float:
    """Exact duality gap max_π' J_τ(π', π) − min_π' J_τ(π, π') of the symmetric game, averaged over
    contexts. 0 exactly at the (regularised) Nash policy, > 0 elsewhere.

    τ = 0: 2·max_y P(y ≻ π) − 1 (the best response is a vertex).
    τ > 0: the best response is the softmax π_ref·exp(P(y ≻ π)/τ), which gives
    2τ·log Σ_y π_ref(y)·exp(P(y ≻ π)/τ) + 2τ·KL(π‖π_ref) − 1. ``pi_ref`` defaults to uniform.
    """
    tau = _check_tau(tau)
    P3 = check_preference(P)
    C, n = P3.shape[0], P3.shape[-1]
    pi2 = check_policy(pi, n, C)
    r = np.einsum("cij,cj->ci", P3, pi2)
    if tau == 0.0:
        gap = 2.0 * r.max(-1) - 1.0
    else:
        ref = uniform(n, C) if pi_ref is None else check_policy(pi_ref, n, C, name="pi_ref")
        if np.any((pi2 > 0) & (ref <= 0)):
            return math.inf  # KL(π‖π_ref) is infinite off π_ref's support
        with np.errstate(divide="ignore"):
            lse = _logsumexp(np.log(ref) + r / tau)
        gap = 2.0 * tau * lse + 2.0 * tau * _kl(pi2, ref) - 1.0
    # exact arithmetic gives gap >= 0; clip the last-ulp negatives so log-log plots stay defined
    return float(max(gap.mean(), 0.0))


def gap_curve(P, policies, *, tau: float = 0.0, pi_ref=None) -> np.ndarray:
    """:func:`duality_gap` of every row of ``policies`` ([T, n] or [T, C, n]) at once → [T]."""
    tau = _check_tau(tau)
    P3 = check_preference(P)
    C, n = P3.shape[0], P3.shape[-1]
    pol = np.asarray(policies, dtype=np.float64)
    pol = pol.reshape(pol.shape[0], 1, n) if pol.ndim == 2 else pol
    if pol.ndim != 3 or pol.shape[1:] != (C, n):
        raise ValueError(f"policies must have shape [T, {n}] or [T, {C}, {n}], got {np.shape(policies)}")
    if np.abs(pol.sum(-1) - 1).max() > 1e-6 or pol.min() < -_ATOL:
        raise ValueError("policies must be rows on the simplex (>= 0, sum 1)")
    r = np.einsum("cij,tcj->tci", P3, pol)
    if tau == 0.0:
        gap = 2.0 * r.max(-1) - 1.0
    else:
        ref = uniform(n, C) if pi_ref is None else check_policy(pi_ref, n, C, name="pi_ref")
        with np.errstate(divide="ignore"):
            lse = _logsumexp(np.log(ref)[None] + r / tau)
        gap = 2.0 * tau * lse + 2.0 * tau * _kl(pol, ref[None]) - 1.0
    return np.maximum(gap.mean(-1), 0.0)


def best_response(P, pi, *, tau: float = 0.0, pi_ref=None) -> np.ndarray:
    """argmax_π' J_τ(π', π): a uniform mix over the maximising vertices for τ = 0, the softmax
    π_ref·exp(P(y ≻ π)/τ) for τ > 0."""
    tau = _check_tau(tau)
    P3 = check_preference(P)
    C, n = P3.shape[0], P3.shape[-1]
    r = np.einsum("cij,cj->ci", P3, check_policy(pi, n, C))
    if tau == 0.0:
        top = (r >= r.max(-1, keepdims=True) - 1e-12).astype(np.float64)
        out = top / top.sum(-1, keepdims=True)
    else:
        ref = uniform(n, C) if pi_ref is None else check_policy(pi_ref, n, C, name="pi_ref")
        with np.errstate(divide="ignore"):
            z = np.log(ref) + r / tau
        out = np.exp(z - _logsumexp(z)[..., None])
    return _squeeze_like(out, P)


def _nash_newton(A: np.ndarray, log_ref: np.ndarray, tau: float, theta: np.ndarray, *, steps: int) -> np.ndarray:
    """Newton's method with a backtracking line search on F(θ) = θ − log π_ref − A·softmax(θ)/τ (one context, on
    π_ref's support), whose root θ* gives the regularised Nash policy softmax(θ*). The Jacobian I − A·(diag π − ππᵀ)/τ
    is never singular: A is skew and diag π − ππᵀ is PSD, so A·(diag π − ππᵀ) has imaginary eigenvalues only."""
    def residual(th):
        pi = np.exp(th - _logsumexp(th))
        return th - log_ref - A @ pi / tau, pi

    F, pi = residual(theta)
    for _ in range(steps):
        if np.abs(F).max() < 1e-13 * (1.0 + np.abs(theta).max()):
            break
        J = np.eye(len(theta)) - A @ (np.diag(pi) - np.outer(pi, pi)) / tau
        step = np.linalg.solve(J, -F)
        norm, t = float(F @ F), 1.0
        while t > 1e-12:
            new_F, new_pi = residual(theta + t * step)
            if float(new_F @ new_F) <= (1 - 1e-4 * t) * norm:
                break
            t *= 0.5
        theta, F, pi = theta + t * step, new_F, new_pi
    return theta


def regularized_nash(P, *, tau: float, pi_ref=None, tol: float = 1e-10, max_iters: int = 100) -> np.ndarray:
    """The unique Nash policy of the τ-regularised game (τ > 0): the fixed point π ∝ π_ref·exp(P(y ≻ π)/τ).

    Found by Newton's method on the logits (:func:`_nash_newton`), continued from τ' = max(τ, 1) down to τ in
    halving steps (each stage starts from the previous one's solution, where Newton converges fast), with at most
    ``max_iters`` Newton steps per stage. Converged means the regularised duality gap of every context is at most
    ``tol``; otherwise RuntimeError, naming the gap reached. (A damped fixed-point iteration contracts only at a rate
    ~τ per step and stalls for τ ≲ 0.03: it left gaps of 0.2–1 after 2·10⁵ steps.)"""
    tau = _check_tau(tau)
    if tau == 0.0:
        raise ValueError("regularized_nash needs tau > 0 (the τ = 0 Nash policy need not be unique)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a number > 0 (the largest regularised duality gap accepted), got {tol!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise ValueError(f"max_iters must be an int >= 1 (Newton steps per continuation stage), got {max_iters!r}")
    P3 = check_preference(P)
    C, n = P3.shape[0], P3.shape[-1]
    ref = uniform(n, C) if pi_ref is None else check_policy(pi_ref, n, C, name="pi_ref")
    taus = [tau]
    while taus[-1] < 1.0:
        taus.append(min(2.0 * taus[-1], 1.0))
    out = np.zeros((C, n))
    for c in range(C):
        keep = ref[c] > 0  # π* vanishes off π_ref's support
        A, log_ref = P3[c][np.ix_(keep, keep)] - 0.5, np.log(ref[c][keep])
        theta = log_ref.copy()
        for t in reversed(taus):
            theta = _nash_newton(A, log_ref, t, theta, steps=int(max_iters))
        out[c, keep] = np.exp(theta - _logsumexp(theta))
    gaps = [duality_gap(P3[c], out[c], tau=tau, pi_ref=ref[c]) for c in range(C)]
    if max(gaps) > tol:
        worst = int(np.argmax(gaps))
        raise RuntimeError(f"regularized_nash did not converge: regularised duality gap {gaps[worst]:.3g} > tol={tol:g} "
                           f"(context {worst}, tau={tau:g}, {max_iters} Newton steps per stage); raise max_iters or tol")
    return _squeeze_like(out, P)


# ------------------------------------------------------------------------------------------- builders

def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_n(n, minimum: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"n (number of responses) must be an int >= {minimum}, got {n!r}")
    return int(n)


def _from_skew(A: np.ndarray) -> np.ndarray:
    """P = ½ + A for skew-symmetric A, clipped to [0, 1]; clipping keeps P + Pᵀ = 1 because the
    clip of ½ + a and of ½ − a are mirror images."""
    return np.clip(0.5 + A, 0.0, 1.0)


def rock_paper_scissors(margin: float = 0.5) -> np.ndarray:
    """Rock, paper, scissors (in that order): each beats the next-but-one with probability ½ + margin.
    The unique Nash policy is uniform; no Bradley–Terry score reproduces it (a 3-cycle)."""
    if not 0 < margin <= 0.5:
        raise ValueError(f"margin must be in (0, 0.5], got {margin!r}")
    return cyclic_game(3, margin=margin)


def cyclic_game(n: int, margin: float = 0.5) -> np.ndarray:
    """Generalised RPS on n (odd) responses: y loses to the next (n−1)/2 responses around the circle
    (and beats the previous (n−1)/2) with probability ½ + margin. Uniform is the unique Nash policy."""
    n = _check_n(n, 3)
    if n % 2 == 0:
        raise ValueError(f"cyclic_game needs an odd n so every response beats and loses to (n-1)/2 others, got {n}")
    if not 0 < margin <= 0.5:
        raise ValueError(f"margin must be in (0, 0.5], got {margin!r}")
    A = np.zeros((n, n))
    for i in range(n):
        for k in range(1, (n - 1) // 2 + 1):
            j = (i + k) % n
            # y loses to the next (n-1)/2 around the circle: paper(1) beats rock(0), rock beats scissors(2)
            A[j, i] = margin
            A[i, j] = -margin
    return _from_skew(A)


STYLE_CLASSES = ("rock", "paper", "scissors", "none")


def style_game(beta: float = 2.0, none_penalty: float = 1.0) -> np.ndarray:
    """The style bandit: the synthetic oracle's style part over (rock, paper, scissors, no style),
    P(s ≻ s') = σ(β·C_γ[s, s']) with C[rock, scissors] = C[scissors, paper] = C[paper, rock] = 1 (−1 transposed) and
    C[styled, none] = γ (``none_penalty``). For γ > 0 its Nash policy is the uniform mix of the three styles.
    (:class:`~inpo.oracles.synthetic.SyntheticIntransitiveOracle` at α = 0 is this game on texts.)"""
    for name, value in (("beta", beta), ("none_penalty", none_penalty)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    C = np.zeros((4, 4))
    for win, lose in ((0, 2), (2, 1), (1, 0)):  # rock beats scissors, scissors beat paper, paper beats rock
        C[win, lose], C[lose, win] = 1.0, -1.0
    C[:3, 3], C[3, :3] = none_penalty, -none_penalty
    z = beta * C
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), 1.0 - 1.0 / (1.0 + np.exp(-np.abs(z))))


def random_intransitive(n: int, seed: int = 0, scale: float = 0.35, contexts: int | None = None) -> np.ndarray:
    """P = ½ + A with A = scale·(G − Gᵀ)/√2 skew-symmetric, G standard normal, clipped to [0, 1].
    Generic draws are intransitive (no BT score fits) with a mixed Nash policy."""
    n = _check_n(n)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    rng = _rng(seed)
    shape = (n, n) if contexts is None else (int(contexts), n, n)
    G = rng.standard_normal(shape)
    A = scale * (G - np.swapaxes(G, -1, -2)) / math.sqrt(2.0)
    return _from_skew(A)


def bradley_terry(n: int, seed: int = 0, spread: float = 1.0, scores=None, contexts: int | None = None) -> np.ndarray:
    """Transitive game P(y ≻ y') = σ(s_y − s_y') with scores s ~ N(0, spread²) (or given). The Nash
    policy is the point mass on argmax s (a Condorcet winner)."""
    n = _check_n(n)
    if scores is None:
        rng = _rng(seed)
        shape = (n,) if contexts is None else (int(contexts), n)
        s = spread * rng.standard_normal(shape)
    else:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape[-1] != n:
            raise ValueError(f"scores must have {n} entries (one per response), got shape {s.shape}")
    d = s[..., :, None] - s[..., None, :]
    return 1.0 / (1.0 + np.exp(-d))


def mixture(games, weights=None) -> np.ndarray:
    """Convex combination Σ w_k P_k of preference matrices of one shape (still valid: P + Pᵀ = 1)."""
    mats = [check_preference(g, name=f"games[{i}]") for i, g in enumerate(games)]
    if not mats:
        raise ValueError("mixture needs at least one game")
    if any(m.shape != mats[0].shape for m in mats):
        raise ValueError(f"mixture games must share one shape, got {[m.shape for m in mats]}")
    w = np.full(len(mats), 1.0 / len(mats)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(mats),) or np.any(w < 0) or abs(w.sum() - 1) > 1e-9:
        raise ValueError(f"weights must be {len(mats)} non-negative numbers summing to 1, got {weights!r}")
    out = sum(wi * m for wi, m in zip(w, mats))
    return out[0] if all(np.ndim(g) == 2 for g in games) else out


GAMES = ("rps", "cyclic", "random", "bt", "mixture", "style")


def make_game(name: str, n: int = 8, seed: int = 0, contexts: int | None = None, **kwargs) -> np.ndarray:
    """Build a named game: ``rps`` (n ignored, 3), ``cyclic`` (odd n), ``random`` (intransitive),
    ``bt`` (Bradley–Terry, transitive), ``mixture`` (½ random + ½ bt, same n and seed), ``style`` (n ignored, 4: the
    synthetic oracle's style bandit, :func:`style_game`).
    ``contexts=C`` gives one independent game per prompt, ``[C, n, n]``."""
    key = str(name).lower()
    if key not in GAMES:
        raise ValueError(f"unknown game {name!r}; expected one of {list(GAMES)}")
    if key in ("rps", "cyclic", "style"):
        single = rock_paper_scissors(**kwargs) if key == "rps" else \
            style_game(**kwargs) if key == "style" else cyclic_game(n, **kwargs)
        return single if contexts is None else np.broadcast_to(single, (int(contexts),) + single.shape).copy()
    if key == "random":
        return random_intransitive(n, seed, contexts=contexts, **kwargs)
    if key == "bt":
        return bradley_terry(n, seed, contexts=contexts, **kwargs)
    w = kwargs.pop("weight", 0.5)
    return mixture([random_intransitive(n, seed, contexts=contexts), bradley_terry(n, seed + 1, contexts=contexts)],
                   [w, 1 - w])
