"""Preference-alignment losses (RQ3): closed forms at the reference, gradient directions, k = 1 reductions,
vectorised == a naive loop, and RLOO's leave-one-out baseline."""
import math

import pytest
import torch

from flower_lite.losses import dpo_loss, rloo_loss, softmax_dpo_loss, summed_margins_dpo_loss

torch.manual_seed(0)
B, K = 5, 3
REF_C, REF_R = -torch.rand(B) * 20, -torch.rand(B, K) * 20


def _grads(loss_fn, chosen, rejected, *args, **kwargs):
    chosen, rejected = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    loss_fn(chosen, rejected, *args, **kwargs).backward()
    return chosen.grad, rejected.grad


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dpo_is_log_2_at_the_reference_and_pushes_chosen_up_rejected_down(smoothing):
    ref_r = REF_R[:, 0]
    assert dpo_loss(REF_C, ref_r, REF_C, ref_r, beta=0.3, label_smoothing=smoothing).item() == pytest.approx(math.log(2))
    g_c, g_r = _grads(dpo_loss, REF_C, ref_r, REF_C, ref_r, beta=0.3, label_smoothing=smoothing)
    assert (g_c < 0).all() and (g_r > 0).all()  # descent raises log pi(chosen), lowers log pi(rejected)
    # at the reference: dL/dlog pi_c = -β (1 - 2ε) / 2 / batch
    assert g_c == pytest.approx(torch.full((B,), -0.3 * (1 - 2 * smoothing) / 2 / B))


def test_dpo_equals_its_formula_row_by_row():
    pi_c, pi_r = REF_C + torch.randn(B), REF_R[:, 0] + torch.randn(B)
    rows = []
    for b in range(B):
        m = 0.5 * ((pi_c[b] - REF_C[b]) - (pi_r[b] - REF_R[b, 0])).item()
        rows.append(-0.8 * math.log(1 / (1 + math.exp(-m))) - 0.2 * math.log(1 / (1 + math.exp(m))))
    assert dpo_loss(pi_c, pi_r, REF_C, REF_R[:, 0], beta=0.5, label_smoothing=0.2).item() == pytest.approx(sum(rows) / B)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pi_c, pi_r, REF_C, REF_R[:, 0], label_smoothing=0.5)


def test_softmax_dpo_closed_forms_k_equals_one_is_dpo_and_a_naive_loop():
    assert softmax_dpo_loss(REF_C, REF_R, REF_C, REF_R, beta=0.3).item() == pytest.approx(math.log(1 + K))
    pi_c, pi_r = REF_C + torch.randn(B), REF_R + torch.randn(B, K)
    one = softmax_dpo_loss(pi_c, pi_r[:, :1], REF_C, REF_R[:, :1], beta=0.3)
    assert one.item() == pytest.approx(dpo_loss(pi_c, pi_r[:, 0], REF_C, REF_R[:, 0], beta=0.3).item(), rel=1e-6)
    rows = []
    for b in range(B):
        r_c = (pi_c[b] - REF_C[b]).item()
        s = sum(math.exp(0.3 * ((pi_r[b, k] - REF_R[b, k]).item() - r_c)) for k in range(K))
        rows.append(-math.log(1 / (1 + math.exp(math.log(s)))))
    assert softmax_dpo_loss(pi_c, pi_r, REF_C, REF_R, beta=0.3).item() == pytest.approx(sum(rows) / B, rel=1e-6)
    g_c, g_r = _grads(softmax_dpo_loss, pi_c, pi_r, REF_C, REF_R, beta=0.3)
    assert (g_c < 0).all() and (g_r > 0).all()


def test_masked_rejected_titles_are_dropped():
    pi_c, pi_r = REF_C + torch.randn(B), REF_R + torch.randn(B, K)
    mask = torch.tensor([[True, True, False]] * B)
    padded = pi_r.clone()
    padded[:, 2] = 1e4  # a padded slot's value must not matter
    for loss in (softmax_dpo_loss, summed_margins_dpo_loss):
        kept = loss(pi_c, pi_r[:, :2], REF_C, REF_R[:, :2], beta=0.3)
        assert loss(pi_c, padded, REF_C, REF_R, beta=0.3, rejected_mask=mask).item() == pytest.approx(kept.item(), rel=1e-6)


def test_summed_margins_dpo_is_the_sum_inside_one_sigmoid():
    assert summed_margins_dpo_loss(REF_C, REF_R, REF_C, REF_R, beta=0.3).item() == pytest.approx(math.log(2))
    pi_c, pi_r = REF_C + torch.randn(B), REF_R + torch.randn(B, K)
    rows = []
    for b in range(B):
        total = sum((pi_r[b, k] - REF_R[b, k]).item() - (pi_c[b] - REF_C[b]).item() for k in range(K))
        rows.append(math.log(1 + math.exp(0.3 * total)))
    assert summed_margins_dpo_loss(pi_c, pi_r, REF_C, REF_R, beta=0.3).item() == pytest.approx(sum(rows) / B, rel=1e-6)
    one = summed_margins_dpo_loss(pi_c, pi_r[:, :1], REF_C, REF_R[:, :1], beta=0.3)
    assert one.item() == pytest.approx(dpo_loss(pi_c, pi_r[:, 0], REF_C, REF_R[:, 0], beta=0.3).item(), rel=1e-6)
    # it differs from S-DPO once k > 1
    assert abs(summed_margins_dpo_loss(pi_c, pi_r, REF_C, REF_R, 0.3) - softmax_dpo_loss(pi_c, pi_r, REF_C, REF_R, 0.3)) > 1e-3
    g_c, g_r = _grads(summed_margins_dpo_loss, pi_c, pi_r, REF_C, REF_R, beta=0.3)
    assert (g_c < 0).all() and (g_r > 0).all()


def test_rloo_advantage_is_leave_one_out_and_equal_rewards_give_no_gradient():
    log_pi = -torch.rand(2, 4) * 5
    ref = log_pi.detach().clone()  # policy = reference: no KL penalty
    reward = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    x = log_pi.clone().requires_grad_()
    rloo_loss(x, reward, ref, kl_coef=0.1).backward()
    # row 0: A = [1, -1/3, -1/3, -1/3]; row 1: A = 0. dL/dlog pi = -A / (batch * n)
    expected = -torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [0.0, 0.0, 0.0, 0.0]]) / 8
    assert torch.allclose(x.grad, expected, atol=1e-7)


def test_rloo_kl_penalty_lowers_the_advantage_of_samples_above_the_reference():
    ref = torch.zeros(1, 2)
    x = torch.tensor([[1.0, 0.0]], requires_grad=True)  # sample 0 is more likely than under the reference
    rloo_loss(x, torch.zeros(1, 2), ref, kl_coef=0.5).backward()
    assert x.grad[0, 0] > 0 > x.grad[0, 1]  # descent lowers sample 0, raises sample 1
    naive = []
    for i in range(2):
        r = [0.0 - 0.5 * (x[0, j].item() - 0.0) for j in range(2)]
        naive.append(r[i] - r[1 - i])
    assert torch.allclose(x.grad, -torch.tensor([naive]) / 2)
    with pytest.raises(ValueError, match="n >= 2"):
        rloo_loss(x[:, :1], torch.zeros(1, 1), ref[:, :1])
