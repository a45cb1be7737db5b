"""DSFA block: exact identity at init, gradients open it, the focus bias formula, K normalisation, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bokeh.depth import DSFA


B, P, D = 2, 5, 16


def _inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(B, P, D, generator=g)
    S = torch.randn(B, n, P, D, generator=g)
    K = torch.rand(B, n, generator=g) * 30 + 1
    return R, S, K


def _open(block: DSFA, seed: int = 1) -> DSFA:
    """Give every zero-initialised residual path a random non-zero value (a 'trained' block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("gamma") or name.startswith("film"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return block


@pytest.mark.parametrize("n", [0, 1, 3])
def test_identity_at_init_bit_for_bit(n: int) -> None:
    block = DSFA(D, num_heads=2)
    R, S, K = _inputs(n)
    out = block(R, S, K)
    assert out.shape == (B, P, D)
    assert torch.equal(out, R)
    assert torch.equal(block(R, None, None), R)


def test_one_step_opens_the_block_and_stack_then_matters() -> None:
    torch.manual_seed(0)
    block = DSFA(D, num_heads=2)
    R, S, K = _inputs(3)
    target = torch.randn(B, P, D)
    loss = F.mse_loss(block(R, S, K), target)
    loss.backward()
    # zero LayerScale gammas see non-zero inputs, so they get gradients at init
    assert block.focus_ls1.gamma.grad.abs().sum() > 0
    assert block.spatial_ls1.gamma.grad.abs().sum() > 0
    assert block.film.weight.grad.abs().sum() > 0
    torch.optim.Adam(block.parameters(), lr=1e-2).step()
    with torch.no_grad():
        out = block(R, S, K)
        out_other_stack = block(R, S.flip(0), K)
    assert not torch.equal(out, R)
    assert (out - R).abs().max() > 1e-4
    assert (out - out_other_stack).abs().max() > 1e-6  # the stack reaches the reference tokens


def test_alpha_is_positive_and_starts_at_alpha_init() -> None:
    block = DSFA(D, num_heads=2, alpha_init=0.3)
    assert math.isclose(float(block.alpha.detach()), 0.3, rel_tol=1e-6)
    with torch.no_grad():
        block.alpha_raw.fill_(-50.0)
    assert float(block.alpha.detach()) > 0


def test_focus_attention_matches_hand_formula() -> None:
    """Only the focus attention path open: out = R + gamma * Wo softmax(q k^T / sqrt(d) - alpha |k_0 - k_j|) v."""
    torch.manual_seed(0)
    block = DSFA(D, num_heads=1, attn_ratio=1.0, spatial=False, k_scale=10.0, alpha_init=2.0)
    with torch.no_grad():
        block.focus_ls1.gamma.fill_(1.0)
    R, S, K = _inputs(2)
    out = block(R, S, K)

    attn = block.focus_attn
    X = torch.cat([R.unsqueeze(1), S], 1).transpose(1, 2)  # [B,P,F,D]
    Xn = F.layer_norm(X, (D,), block.focus_norm1.weight, block.focus_norm1.bias, 1e-6)
    q = Xn[:, :, 0] @ attn.q.weight.T + attn.q.bias  # [B,P,D]
    kv = Xn @ attn.kv.weight.T + attn.kv.bias
    k, v = kv[..., :D], kv[..., D:]
    knorm = torch.cat([torch.zeros(B, 1), K / 10.0], 1)  # reference at k = 0
    logits = torch.einsum("bpd,bpfd->bpf", q, k) / math.sqrt(D) - 2.0 * knorm.abs()[:, None, :]
    expected = R + (torch.einsum("bpf,bpfd->bpd", logits.softmax(-1), v) @ attn.proj.weight.T + attn.proj.bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_focus_bias_slope_controls_stack_influence() -> None:
    """Large alpha: attention stays on the reference (k = 0), so the stack no longer matters; small alpha: it does."""
    torch.manual_seed(0)
    block = DSFA(D, num_heads=2, spatial=False)
    with torch.no_grad():
        block.focus_ls1.gamma.fill_(1.0)
    R, S, K = _inputs(3)
    S2 = S + torch.randn_like(S)

    def influence(alpha: float) -> float:
        with torch.no_grad():
            block.alpha_raw.fill_(math.log(math.expm1(alpha)) if alpha < 30 else alpha)
            return float((block(R, S, K) - block(R, S2, K)).abs().max())

    assert influence(200.0) < 1e-6
    assert influence(1e-3) > 1e-2


def test_k_is_normalised_by_k_scale() -> None:
    """Same K / k_scale -> same output; another K -> another output."""
    a = _open(DSFA(D, num_heads=2, k_scale=10.0))
    b = DSFA(D, num_heads=2, k_scale=20.0)
    b.load_state_dict(a.state_dict())
    R, S, K = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(a(R, S, K), b(R, S, 2 * K))
        assert (a(R, S, K) - a(R, S, 2 * K)).abs().max() > 1e-5


def test_stack_order_does_not_matter() -> None:
    block = _open(DSFA(D, num_heads=2))
    R, S, K = _inputs(3)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(block(R, S, K), block(R, S[:, perm], K[:, perm]), atol=1e-6, rtol=1e-5)


def test_reference_only_equals_empty_stack() -> None:
    block = _open(DSFA(D, num_heads=2))
    R, S, K = _inputs(0)
    with torch.no_grad():
        out = block(R, S, K)
        torch.testing.assert_close(out, block(R))
        assert not torch.equal(out, R)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda R, S, K: (R, S, K.clone().fill_(float("nan"))), "finite"),
        (lambda R, S, K: (R, S, -K), ">= 0"),
        (lambda R, S, K: (R, S, K[:, :1]), r"\[2,3\]"),
        (lambda R, S, K: (R, S, None), "K_px_m"),
        (lambda R, S, K: (R, S[..., :4], K), "stack tokens"),
        (lambda R, S, K: (R[..., :4], S, K), "reference tokens"),
        (lambda R, S, K: (R, None, K), "no stack"),
    ],
)
def test_bad_input(make, match: str) -> None:
    block = DSFA(D, num_heads=2)
    R, S, K = make(*_inputs(3))
    with pytest.raises(ValueError, match=match):
        block(R, S, K)


@pytest.mark.parametrize("kwargs", [dict(k_scale=0.0), dict(alpha_init=0.0), dict(mlp_ratio=0.0), dict(num_heads=0)])
def test_bad_construction(kwargs) -> None:
    with pytest.raises(ValueError):
        DSFA(D, **kwargs)


def test_parameter_count_matches_formula() -> None:
    """Per block (attn width a = D*attn_ratio, MLP width m = D*mlp_ratio): kappa MLP + FiLM + 2 x (attn + MLP) + ..."""
    d, a, m = 64, 32, 64
    block = DSFA(d, num_heads=4, mlp_ratio=1.0, attn_ratio=0.5)
    kappa = (1 * d // 4 + d // 4) + (d // 4 * d + d)
    film = d * 2 * d + 2 * d
    attn = (d * a + a) + (d * 2 * a + 2 * a) + (a * d + d)
    mlp = (d * m + m) + (m * d + d)
    norms, scales = 4 * 2 * d, 4 * d
    expected = kappa + film + 2 * (attn + mlp) + norms + scales + 1
    assert sum(p.numel() for p in block.parameters()) == expected


def test_learns_to_pick_a_frame_by_its_k() -> None:
    """Target: the reference plus the tokens of the most blurred frame (largest K). Without using K the best answer
    is R + mean of the frames (error 1 - 1/N = 0.67 per element); DSFA trained briefly must do clearly better."""
    torch.manual_seed(0)
    n = 3

    def batch(size: int):
        R, S = torch.randn(size, 4, D), torch.randn(size, n, 4, D)
        K = torch.rand(size, n) * 30
        return R, S, K, R + S[torch.arange(size), K.argmax(1)]

    block = DSFA(D, num_heads=2, mlp_ratio=2.0, attn_ratio=1.0)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    for _ in range(250):
        R, S, K, target = batch(16)
        loss = F.mse_loss(block(R, S, K), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    R, S, K, target = batch(256)
    with torch.no_grad():
        error = float(F.mse_loss(block(R, S, K), target))
        blind = float(F.mse_loss(R + S.mean(1), target))
    assert blind == pytest.approx(1 - 1 / n, rel=0.1)
    assert error < 0.6 * blind, (error, blind)


def test_stats_report_closed_paths_at_init_and_open_after_a_step() -> None:
    block = DSFA(D, num_heads=2, alpha_init=0.5)
    stats = block.stats()
    assert stats["alpha"] == pytest.approx(0.5)
    assert {k: v for k, v in stats.items() if k != "alpha"} == {
        "gamma_spatial1": 0.0, "gamma_spatial2": 0.0, "gamma_focus1": 0.0, "gamma_focus2": 0.0, "film": 0.0}
    R, S, K = _inputs(2)
    F.mse_loss(block(R, S, K), torch.randn(B, P, D)).backward()
    torch.optim.SGD(block.parameters(), lr=0.1).step()
    assert block.stats()["gamma_focus1"] > 0 and block.stats()["film"] > 0


def test_gamma_init_opens_every_residual_path():
    """gamma_init > 0 (encoders trained from scratch): the stack changes the output at init; 0 keeps the identity."""
    torch.manual_seed(0)
    R, S, K = torch.randn(2, 5, D), torch.randn(2, 3, 5, D), torch.tensor([[2.0, 5.0, 12.0]] * 2)
    open_block = DSFA(D, num_heads=2, gamma_init=1.0)
    assert all(ls.gamma.min().item() == 1.0 for ls in (open_block.spatial_ls1, open_block.spatial_ls2,
                                                         open_block.focus_ls1, open_block.focus_ls2))
    with torch.no_grad():
        out, out_other_stack = open_block(R, S, K), open_block(R, torch.randn(2, 3, 5, D), K)
    assert (out - R).abs().max() > 1e-2 and (out - out_other_stack).abs().max() > 1e-2
    closed = DSFA(D, num_heads=2, gamma_init=0.0)
    assert torch.equal(closed(R, S, K), R)


@pytest.mark.parametrize("value", [-0.1, float("nan")])
def test_gamma_init_must_be_non_negative(value):
    with pytest.raises(ValueError, match="gamma_init"):
        DSFA(D, num_heads=2, gamma_init=value)
