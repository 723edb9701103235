"""Behaviour and math of ibdc_cli.losses: CFD, the tri-level terms, DM and AVDD.

Hand-computed examples use 2-D unit vectors and one or two chosen frequencies, with the arithmetic
written out here (math.cos, cmath.exp), independent of the implementation.
"""

import cmath
import itertools
import math

import pytest
import torch

from ibdc_cli import losses
from ibdc_cli.losses import (
    avdd_loss,
    cfd,
    cfd_from_cf,
    cfd_terms,
    characteristic_function,
    cross_modal_hybrid,
    cross_modal_paper,
    dm_loss,
    imagebinddc_loss,
    joint_modal_cf,
    joint_modal_paper,
    l2n,
    modality_cfs,
    sample_frequencies,
    uni_modal_loss,
)

T = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=T)


def approx(x: float):
    return pytest.approx(x, rel=1e-9, abs=1e-9)


def random_sets(seed: int, modalities=("a", "b"), n=6, m=3, d=4, dtype=T):
    g = torch.Generator().manual_seed(seed)
    real = {k: torch.randn(n, d, generator=g, dtype=dtype) for k in modalities}
    syn = {k: torch.randn(m, d, generator=g, dtype=dtype) for k in modalities}
    return real, syn


def random_cf(seed: int, k: int = 50):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(k, generator=g, dtype=T) * 2 - 1 for _ in range(2))


# ----------------------------------------------------------------------------------------------- frequencies


def test_sample_frequencies_shape_scale_and_seed():
    f = sample_frequencies(4000, 8, 2.0, generator=torch.Generator().manual_seed(0))
    assert f.shape == (4000, 8) and f.dtype == torch.float32
    assert f.mean().item() == pytest.approx(0.0, abs=0.05)
    assert f.std().item() == pytest.approx(2.0, rel=0.03)
    again = sample_frequencies(4000, 8, 2.0, generator=torch.Generator().manual_seed(0))
    other = sample_frequencies(4000, 8, 2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(f, again) and not torch.equal(f, other)


# -------------------------------------------------------------------------------------------------------- CF


def test_cf_of_a_single_point_is_exp_j_t_x():
    x = t([[0.3, -0.7]])
    freqs = t([[1.0, 2.0], [0.5, 0.0], [-1.0, 3.0]])
    real, imag = characteristic_function(x, freqs)
    angles = [0.3 * 1.0 - 0.7 * 2.0, 0.3 * 0.5, 0.3 * -1.0 - 0.7 * 3.0]
    assert real.tolist() == pytest.approx([math.cos(a) for a in angles], abs=1e-12)
    assert imag.tolist() == pytest.approx([math.sin(a) for a in angles], abs=1e-12)


def test_cf_chunked_matches_unchunked_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 5, generator=g, dtype=T, requires_grad=True)
    freqs = torch.randn(64, 5, generator=g, dtype=T)
    weights = torch.randn(2, 64, generator=g, dtype=T)

    def run(max_elements):
        real, imag = characteristic_function(x, freqs, max_elements=max_elements)
        (grad,) = torch.autograd.grad((weights[0] * real + weights[1] * imag).sum(), x)
        return real, imag, grad

    whole = run(10**9)
    chunked = run(1000)  # 15 rows per chunk, the last one partial
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():
        no_grad = characteristic_function(x, freqs, max_elements=1000)
    torch.testing.assert_close(no_grad[0], whole[0], rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------------- CFD math


@pytest.mark.parametrize("reduction", ["ncfm", "eq3"])
def test_cfd_is_zero_for_identical_sets_and_grows_with_a_mean_shift(reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g) * 0.5
    freqs = sample_frequencies(1024, 8, generator=g)
    direction = torch.ones(8) / math.sqrt(8)
    values = [cfd(x, x + s * direction, freqs, reduction=reduction).item() for s in (0.0, 0.1, 0.3, 1.0)]
    assert values[0] <= 2e-6  # sqrt(eps) = 1e-6 for "ncfm", exactly 0 for "eq3", even in float32
    assert values[0] < values[1] < values[2] < values[3]
    assert values[1] > 1e-4  # well above the float32 floor


def _minimise_single_point(x: torch.Tensor, freqs: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    s = start.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([s], lr=1, max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = cfd(x, s[None], freqs, reduction="eq3")
        loss.backward()
        return loss

    optimiser.step(closure)
    return s.detach()


def test_eq3_optimum_of_one_point_is_the_kernel_mean_shift_point_and_the_mean_as_sigma_shrinks():
    """Why CF matching and mean matching (DM) differ at one point per class (docs/benchmarks.md).

    For t ~ N(0, sigma^2 I), E_t |phi_X(t) - exp(j t.s)|^2 = const - 2 mean_i exp(-sigma^2 |x_i - s|^2 / 2):
    the Eq. 3 minimiser s* is a mode of the Gaussian kernel density, the fixed point of mean shift
    s = sum_i w_i x_i / sum_i w_i with w_i = exp(-sigma^2 |x_i - s|^2 / 2); as sigma -> 0 all w_i
    become equal and s* -> the mean, which is what DM matches."""
    g = torch.Generator().manual_seed(0)
    # a skewed, one-peaked class (log-normal coordinates), so the mode and the mean differ
    x = torch.randn(60, 3, generator=g, dtype=T).exp()
    mean = x.mean(0)
    for sigma in (0.02, 1.0):
        freqs = sample_frequencies(50_000, 3, sigma, generator=g, dtype=T)
        # from the farthest row when the kernel is wide; from the mean (a local search) when it is narrow
        start = x[x.norm(dim=1).argmax()] if sigma < 0.1 else mean
        optimum = _minimise_single_point(x, freqs, start=start)
        shift = mean.clone()
        for _ in range(500):
            w = torch.exp(-(sigma**2) * ((x - shift) ** 2).sum(1) / 2)
            shift = (w[:, None] * x).sum(0) / w.sum()
        if sigma < 0.1:
            assert (optimum - mean).norm() < 0.03  # from 17 away
        else:
            assert (mean - shift).norm() > 0.5  # the mode really is elsewhere ...
            assert (optimum - shift).norm() < 0.05  # ... and Eq. 3 finds it, not the mean


def test_amplitude_plus_phase_is_the_squared_modulus_of_the_difference():
    phi_x, phi_y = random_cf(0), random_cf(1)
    amp, phase = cfd_terms(phi_x, phi_y)
    diff_sq = (phi_x[0] - phi_y[0]) ** 2 + (phi_x[1] - phi_y[1]) ** 2
    torch.testing.assert_close(amp + phase, diff_sq, rtol=0, atol=1e-12)
    assert cfd_from_cf(phi_x, phi_y, alpha=1, beta=1, reduction="eq3").item() == approx(diff_sq.mean().item())
    for a in (0.5, 2.0):
        ncfm = cfd_from_cf(phi_x, phi_y, alpha=a, beta=a, reduction="ncfm").item()
        assert ncfm == approx(math.sqrt(a) * diff_sq.sqrt().mean().item())


def test_phase_term_equals_the_polar_formula():
    phi_x, phi_y = random_cf(2), random_cf(3)
    amp, phase = cfd_terms(phi_x, phi_y)
    mod_x, mod_y = torch.hypot(*phi_x), torch.hypot(*phi_y)
    arg_x, arg_y = torch.atan2(phi_x[1], phi_x[0]), torch.atan2(phi_y[1], phi_y[0])
    torch.testing.assert_close(amp, (mod_x - mod_y) ** 2, rtol=0, atol=1e-10)
    torch.testing.assert_close(phase, 2 * mod_x * mod_y * (1 - torch.cos(arg_x - arg_y)), rtol=0, atol=1e-10)


def test_cfd_gradient_is_finite_where_a_cf_vanishes():
    zero = (torch.zeros(3, dtype=T, requires_grad=True), torch.zeros(3, dtype=T, requires_grad=True))
    other = (t([0.5, 0.0, 0.0]), t([0.0, 0.2, 0.0]))
    for reduction in ("ncfm", "eq3"):
        grads = torch.autograd.grad(cfd_from_cf(zero, other, reduction=reduction), zero)
        assert all(torch.isfinite(gr).all() for gr in grads)


def test_unknown_reduction_and_forms_are_rejected():
    phi = random_cf(0)
    with pytest.raises(ValueError, match="reduction"):
        cfd_from_cf(phi, phi, reduction="l2")
    real, syn = random_sets(0)
    with pytest.raises(ValueError, match="cross form"):
        imagebinddc_loss(real, syn, freqs=None, freqs_joint=None, lambda_uni=0, cross_form="eq8")
    with pytest.raises(ValueError, match="modalities differ"):
        dm_loss(real, {"a": syn["a"]})


# --------------------------------------------------------------------------------------------------- by hand


def test_cfd_by_hand():
    # X = {[1,0], [0,1]}, Y = {[1,0]}; t1 = [1,0], t2 = [0,2].
    # t1: t.x = 1, 0 -> phi_X = (e^{j} + 1)/2 = cos(.5) e^{j .5};  t.y = 1 -> phi_Y = e^{j}.
    # t2: t.x = 0, 2 -> phi_X = (1 + e^{2j})/2 = cos(1) e^{j};     t.y = 0 -> phi_Y = 1.
    x, y, freqs = t([[1, 0], [0, 1]]), t([[1, 0]]), t([[1, 0], [0, 2]])
    amp = [(math.cos(0.5) - 1) ** 2, (math.cos(1) - 1) ** 2]
    phase = [2 * math.cos(0.5) * (1 - math.cos(0.5 - 1)), 2 * math.cos(1) * (1 - math.cos(1 - 0))]
    got_amp, got_phase = cfd_terms(characteristic_function(x, freqs), characteristic_function(y, freqs))
    assert got_amp.tolist() == pytest.approx(amp, abs=1e-12)
    assert got_phase.tolist() == pytest.approx(phase, abs=1e-12)
    assert amp[0] + phase[0] == pytest.approx(math.sin(0.5) ** 2)  # = |(1 - e^{j})/2|^2

    eq3 = (1.0 * amp[0] + 0.25 * phase[0] + 1.0 * amp[1] + 0.25 * phase[1]) / 2
    assert cfd(x, y, freqs, alpha=1.0, beta=0.25, reduction="eq3").item() == approx(eq3)
    ncfm = (math.sqrt(0.5 * amp[0] + 0.5 * phase[0]) + math.sqrt(0.5 * amp[1] + 0.5 * phase[1])) / 2
    assert cfd(x, y, freqs).item() == approx(ncfm)  # defaults: alpha = beta = 0.5, "ncfm"


def test_cross_modal_paper_by_hand():
    # real: a = [1,0],[0,1]; b = [1,0],[1,0] -> r_a * r_b = [1,0],[0,0] -> mean [.5, 0]
    # syn:  a = [.6,.8];     b = [.8,.6]     -> s_a * s_b = [.48, .48]
    # cos([.5, 0], [.48, .48]) = .5 * .48 / (.5 * .48 * sqrt 2) = 1/sqrt 2
    real = {"a": t([[3, 0], [0, 1]]), "b": t([[1, 0], [2, 0]])}  # not unit: the loss normalises
    syn = {"a": t([[0.6, 0.8]]), "b": t([[0.8, 0.6]])}
    assert cross_modal_paper(real, syn).item() == approx(1 - 1 / math.sqrt(2))


def test_cross_modal_hybrid_by_hand():
    # One real row, so both synthetic rows pair with it: X_j = r_a + s_b,j ; Y_j = r_b + s_a,j.
    # r_a = [1,0], r_b = [0,1]; s_a = [.6,.8],[0,1]; s_b = [.8,-.6],[1,0]
    # X = [1.8,-.6], [2,0];  Y = [.6,1.8], [0,2];  t = [1,0] -> t.X = 1.8, 2;  t.Y = .6, 0
    real = {"a": t([[1, 0]]), "b": t([[0, 1]])}
    syn = {"a": t([[0.6, 0.8], [0, 1]]), "b": t([[0.8, -0.6], [1, 0]])}
    freqs = t([[1, 0]])
    phi_x = (cmath.exp(1.8j) + cmath.exp(2j)) / 2
    phi_y = (cmath.exp(0.6j) + cmath.exp(0j)) / 2
    gen = torch.Generator().manual_seed(0)
    eq3 = cross_modal_hybrid(real, syn, freqs, generator=gen, alpha=1, beta=1, reduction="eq3")
    assert eq3.item() == approx(abs(phi_x - phi_y) ** 2)
    ncfm = cross_modal_hybrid(real, syn, freqs, generator=gen)
    assert ncfm.item() == approx(math.sqrt(0.5) * abs(phi_x - phi_y))


def test_joint_modal_paper_by_hand():
    # mean r_a = [.6,.8], mean r_b = [.8,.6], mean s_a = [.5,.5], mean s_b = [.6,.8]
    # u = mean r_a * mean s_b = [.36,.64];  v = mean r_b * mean s_a = [.4,.3]
    real = {"a": t([[0.6, 0.8]]), "b": t([[0.8, 0.6]])}
    syn = {"a": t([[1, 0], [0, 1]]), "b": t([[0.6, 0.8]])}
    dot = 0.36 * 0.4 + 0.64 * 0.3
    assert joint_modal_paper(real, syn, rho="dot").item() == approx(1 - dot)
    cos = dot / (math.sqrt(0.36**2 + 0.64**2) * math.sqrt(0.4**2 + 0.3**2))
    assert joint_modal_paper(real, syn, rho="cos").item() == approx(1 - cos)


def test_joint_modal_cf_by_hand():
    # real rows [a; b] = [1,0,0,1], [0,1,0,1]; synthetic [1,0,1,0]; t = [1,0,0,1]
    # t.real = 2, 1 -> phi_R = (e^{2j} + e^{j})/2 = cos(.5) e^{1.5j};  t.syn = 1 -> phi_S = e^{j}
    real = {"a": t([[1, 0], [0, 1]]), "b": t([[0, 1], [0, 1]])}
    syn = {"a": t([[1, 0]]), "b": t([[1, 0]])}
    freqs_joint = t([[1, 0, 0, 1]])
    amp = (math.cos(0.5) - 1) ** 2
    phase = 2 * math.cos(0.5) * 1 * (1 - math.cos(1.5 - 1))
    got = joint_modal_cf(real, syn, freqs_joint, alpha=1.0, beta=0.25, reduction="eq3")
    assert got.item() == approx(amp + 0.25 * phase)
    assert joint_modal_cf(real, syn, freqs_joint).item() == approx(math.sqrt(0.5 * amp + 0.5 * phase))


def test_dm_by_hand():
    # a: mean real [.5,.5] - mean syn [.6,.8] = [-.1,-.3] -> .01 + .09 = .1
    # b: real [2,0] -> [1,0]; syn [0,1] -> [1,-1] -> 2
    real = {"a": t([[1, 0], [0, 1]]), "b": t([[2, 0]])}
    syn = {"a": t([[0.6, 0.8]]), "b": t([[0, 1]])}
    assert dm_loss(real, syn).item() == approx(0.1 + 2.0)


def test_avdd_by_hand():
    # mean r_a = [1,0], s_a = [0,1], r_b = [1,0], s_b = [0,1]
    # dm = |[1,-1]|^2 + |[1,-1]|^2 = 4
    # icm = |(r_a - s_b) + (r_b - s_a)|^2 = |[2,-2]|^2 = 8;  cgm = |(r_a - r_b) - (s_a - s_b)|^2 = 0
    real = {"a": t([[1, 0]]), "b": t([[1, 0]])}
    syn = {"a": t([[0, 1]]), "b": t([[0, 1]])}
    out = avdd_loss(real, syn, lambda_icm=0.5, lambda_cgm=3.0)
    assert (out["dm"].item(), out["icm"].item(), out["cgm"].item()) == (approx(4), approx(8), approx(0))
    assert out["total"].item() == approx(4 + 0.5 * 8)


# ---------------------------------------------------------------------------------------------- AVDD algebra


@pytest.mark.parametrize("lam", [0.3, 1.0, 2.5])
def test_avdd_extra_terms_cancel_to_dm_at_equal_lambdas(lam):
    real, syn = random_sets(7, n=20, m=5, d=16)
    out = avdd_loss(real, syn, lambda_icm=lam, lambda_cgm=lam)
    dm = dm_loss(real, syn)
    assert out["dm"].item() == approx(dm.item())
    assert out["total"].item() == pytest.approx((1 + 2 * lam) * dm.item(), rel=1e-6, abs=1e-6)
    assert out["icm"].item() != pytest.approx(out["cgm"].item(), rel=1e-3)  # each term alone is not DM
    unequal = avdd_loss(real, syn, lambda_icm=lam, lambda_cgm=2 * lam)["total"].item()
    assert unequal != pytest.approx((1 + 3 * lam) * dm.item(), rel=1e-3)


def test_avdd_with_three_modalities_is_dm_scaled_by_pair_count():
    real, syn = random_sets(8, modalities=("a", "b", "c"), n=20, m=5, d=16)
    out = avdd_loss(real, syn, lambda_icm=1.0, lambda_cgm=1.0)
    assert out["total"].item() == pytest.approx((1 + 2 * 2) * dm_loss(real, syn).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("reduction", ["ncfm", "eq3"])
def test_cfd_gradcheck(reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=T)
    y = torch.randn(4, 3, generator=g, dtype=T, requires_grad=True)
    freqs = torch.randn(6, 3, generator=g, dtype=T)
    assert torch.autograd.gradcheck(lambda y: cfd(x, y, freqs, reduction=reduction), (y,))


@pytest.mark.parametrize(
    ("cross_form", "joint_form", "reduction"),
    [(c, j, "ncfm") for c, j in itertools.product(["paper", "hybrid"], ["paper", "paper-cos", "cf"])]
    + [("hybrid", "cf", "eq3")],
)
def test_imagebinddc_loss_gradcheck(cross_form, joint_form, reduction):
    real, syn = random_sets(1, n=5, m=3, d=4)
    g = torch.Generator().manual_seed(2)
    freqs = {m: torch.randn(6, 4, generator=g, dtype=T) for m in real}
    freqs_joint = torch.randn(6, 8, generator=g, dtype=T)
    inputs = tuple(syn[m].clone().requires_grad_(True) for m in ("a", "b"))

    def total(s_a, s_b):
        return imagebinddc_loss(
            real,
            {"a": s_a, "b": s_b},
            freqs=freqs,
            freqs_joint=freqs_joint,
            lambda_cross=0.7,
            lambda_joint=1.3,
            cross_form=cross_form,
            joint_form=joint_form,
            reduction=reduction,
            generator=torch.Generator().manual_seed(3),  # same hybrid pairing at every evaluation
        )["total"]

    assert torch.autograd.gradcheck(total, inputs)


# ------------------------------------------------------------------------------------------- modality counts


def test_one_modality_cross_and_joint_are_zero_and_keep_the_graph():
    real, syn = random_sets(3, modalities=("a",))
    syn = {"a": syn["a"].requires_grad_(True)}
    freqs = torch.randn(8, 4, dtype=T)
    terms = [
        cross_modal_paper(real, syn),
        cross_modal_hybrid(real, syn, freqs, generator=torch.Generator().manual_seed(0)),
        joint_modal_paper(real, syn),
        joint_modal_paper(real, syn, rho="cos"),
        joint_modal_cf(real, syn, freqs),
    ]
    for term in terms:
        assert term.item() == 0.0 and term.dtype == T and term.requires_grad
    out = imagebinddc_loss(real, syn, freqs={"a": freqs}, freqs_joint=freqs, joint_form="cf")
    assert out["cross"].item() == 0.0 and out["joint"].item() == 0.0
    assert out["total"].item() == approx(out["uni"].item()) and out["uni"].item() > 0
    out["total"].backward()
    assert syn["a"].grad is not None and syn["a"].grad.abs().sum() > 0


def sub(d, keys):
    return {k: d[k] for k in keys}


def test_three_modalities_sum_the_paired_terms_over_all_pairs():
    real, syn = random_sets(4, modalities=("a", "b", "c"), n=7, m=3, d=4)
    freqs = torch.randn(16, 4, dtype=T)
    pairs = list(itertools.combinations("abc", 2))
    assert len(pairs) == 3

    def hybrid(r, s):
        return cross_modal_hybrid(r, s, freqs, generator=torch.Generator().manual_seed(5))

    for term in (
        cross_modal_paper,
        hybrid,
        joint_modal_paper,
        lambda r, s: joint_modal_paper(r, s, rho="cos"),
    ):
        pairwise = [term(sub(real, p), sub(syn, p)).item() for p in pairs]
        assert term(real, syn).item() == approx(sum(pairwise))
        assert min(pairwise) > 0


def test_joint_cf_uses_the_concatenation_of_all_modalities():
    real, syn = random_sets(5, modalities=("a", "b", "c"), n=7, m=3, d=4)
    g = torch.Generator().manual_seed(6)
    freqs_ab = torch.randn(16, 8, generator=g, dtype=T)
    # Zero frequencies on c's block: the 3-modality joint CF then reduces to the (a, b) one ...
    blind_to_c = torch.cat([freqs_ab, torch.zeros(16, 4, dtype=T)], dim=1)
    expected = joint_modal_cf(sub(real, "ab"), sub(syn, "ab"), freqs_ab).item()
    assert joint_modal_cf(real, syn, blind_to_c).item() == approx(expected)
    # ... and with c's block in, c changes the value.
    seeing_c = torch.cat([freqs_ab, torch.randn(16, 4, generator=g, dtype=T)], dim=1)
    assert joint_modal_cf(real, syn, seeing_c).item() != approx(expected)


# ----------------------------------------------------------------------------------------------- composition


def test_imagebinddc_loss_weights_terms_and_skips_disabled_ones():
    real, syn = random_sets(9, n=8, m=3, d=4)
    g = torch.Generator().manual_seed(1)
    freqs = {m: torch.randn(16, 4, generator=g, dtype=T) for m in real}
    freqs_joint = torch.randn(16, 8, generator=g, dtype=T)
    out = imagebinddc_loss(
        real,
        syn,
        freqs=freqs,
        freqs_joint=freqs_joint,
        lambda_uni=0.5,
        lambda_cross=2.0,
        lambda_joint=3.0,
        cross_form="paper",
        joint_form="cf",
        reduction="ncfm",
    )
    assert out["uni"].item() == approx(uni_modal_loss(real, syn, freqs, reduction="ncfm").item())
    assert out["cross"].item() == approx(cross_modal_paper(real, syn).item())
    assert out["joint"].item() == approx(joint_modal_cf(real, syn, freqs_joint, reduction="ncfm").item())
    weighted = 0.5 * out["uni"] + 2.0 * out["cross"] + 3.0 * out["joint"]
    assert out["total"].item() == approx(weighted.item())

    # lambda_uni = 0 and a non-CF joint form need no frequencies at all; "none" skips a term.
    skipped = imagebinddc_loss(
        real, syn, freqs=None, freqs_joint=None, lambda_uni=0, cross_form="none", joint_form="paper"
    )
    assert skipped["uni"].item() == 0.0 and skipped["cross"].item() == 0.0
    assert skipped["total"].item() == approx(joint_modal_paper(real, syn).item())
    with pytest.raises(ValueError, match="freqs_joint"):
        imagebinddc_loss(real, syn, freqs=freqs, freqs_joint=None, joint_form="cf")


def test_loss_defaults_are_the_product_defaults():
    """`imagebinddc_loss(real, syn, freqs=..., freqs_joint=...)` is the objective `ibdc condense` optimises
    by default: its keyword defaults and CondenseConfig's are the same `losses.DEFAULT_*` values."""
    import inspect

    from ibdc_cli.condense import CondenseConfig

    loss_defaults = {name: p.default for name, p in inspect.signature(imagebinddc_loss).parameters.items()}
    config = CondenseConfig(modalities=["image", "audio"])
    config_field = {"reduction": "cf_reduction"}
    names = ["lambda_uni", "lambda_cross", "lambda_joint", "cross_form", "joint_form", "alpha", "beta", "reduction"]
    for name in names:
        assert loss_defaults[name] == getattr(config, config_field.get(name, name)), name
    # and they are what docs/method.md documents, so this cannot pass by both sides drifting together
    assert (config.cf_reduction, config.cross_form, config.joint_form) == ("eq3", "none", "cf")
    assert (config.alpha, config.beta) == (0.5, 0.5)
    assert (config.lambda_uni, config.lambda_cross, config.lambda_joint) == (1, 1, 1)


def test_precomputed_real_cfs_give_the_same_loss():
    real, syn = random_sets(10, n=30, m=3, d=4)
    g = torch.Generator().manual_seed(2)
    freqs = {m: torch.randn(32, 4, generator=g, dtype=T) for m in real}
    freqs_joint = torch.randn(32, 8, generator=g, dtype=T)
    real_joint_cf = characteristic_function(torch.cat([l2n(real["a"]), l2n(real["b"])], 1), freqs_joint)
    settings = {"freqs": freqs, "freqs_joint": freqs_joint, "joint_form": "cf"}
    plain = imagebinddc_loss(real, syn, **settings)["total"].item()
    banked = imagebinddc_loss(real, syn, real_cf=modality_cfs(real, freqs), real_joint_cf=real_joint_cf, **settings)[
        "total"
    ].item()
    assert banked == approx(plain)


# ----------------------------------------------------------------------------------------------- SPEC remark


def test_joint_paper_dot_form_is_nearly_constant_in_high_dimension():
    """SPEC §3: with rho = dot the paper's joint term is ~1 whatever the synthetic set.

    Measured (D = 256, 100 real and 10 synthetic random unit vectors per modality): 1 - 1e-6 for a
    random synthetic set and for one equal to the real set; the cosine form gives ~0.99 vs 0.
    For a tight class cluster the dot form still only moves from 0.99998 to ~0.997.
    """
    g = torch.Generator().manual_seed(0)
    d = 256
    real = {m: torch.randn(100, d, generator=g) for m in "ab"}
    syn = {m: torch.randn(10, d, generator=g) for m in "ab"}
    assert joint_modal_paper(real, syn).item() == pytest.approx(1.0, abs=1e-4)
    assert joint_modal_paper(real, real).item() == pytest.approx(1.0, abs=1e-4)  # perfect match
    assert joint_modal_paper(real, real, rho="cos").item() == pytest.approx(0.0, abs=1e-5)
    assert joint_modal_paper(real, syn, rho="cos").item() > 0.5

    centre = {m: l2n(torch.randn(1, d, generator=g)) for m in "ab"}
    cluster = {m: centre[m] + 0.5 * torch.randn(100, d, generator=g) / math.sqrt(d) for m in "ab"}
    matched, unmatched = joint_modal_paper(cluster, cluster).item(), joint_modal_paper(cluster, syn).item()
    assert unmatched == pytest.approx(1.0, abs=1e-3)  # 1 - dot; the dot may have either sign
    assert 0.99 < matched < unmatched < matched + 0.01


# --------------------------------------------------------------------------------------------------
# the configured losses and the frequency bank


def _class_sets(seed: int, n: int = 12, dim: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1) for m in ("image", "audio")}


def test_configured_imagebinddc_loss_is_the_functional_loss_at_the_config():
    from ibdc_cli.config import CondenseConfig

    config = CondenseConfig(num_freqs=32, sigma=0.7, lambda_cross=0.5, cross_form="hybrid", cf_reduction="ncfm")
    loss = losses.ImageBindDCLoss.from_config(config)
    real, syn = _class_sets(0), _class_sets(1, n=4)
    terms = loss(real, syn, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the documented order: per modality, then joint
    freqs = {m: losses.sample_frequencies(32, 16, 0.7, generator=g) for m in syn}
    joint = losses.sample_frequencies(32, 32, 0.7, generator=g)
    expected = losses.imagebinddc_loss(
        real, syn, freqs=freqs, freqs_joint=joint, lambda_cross=0.5, cross_form="hybrid", reduction="ncfm", generator=g
    )
    assert terms.keys() == expected.keys()
    assert all(torch.equal(terms[k], expected[k]) for k in terms)


def test_frequency_bank_caches_the_real_cfs_that_the_loss_would_compute():
    real, syn = _class_sets(2), _class_sets(3, n=4)
    bank = losses.FrequencyBank.draw(
        3, {"image": 16, "audio": 16}, 24, 1.0, joint=True, generator=torch.Generator().manual_seed(0)
    )
    bank.add_class(7, real)
    assert len(bank) == 3
    draw = bank.sample(7, torch.Generator().manual_seed(1), joint=True)
    b = next(i for i, f in enumerate(bank.freqs) if f is draw.freqs)
    computed = losses.modality_cfs(real, bank.freqs[b])["audio"]
    assert all(torch.allclose(x, y) for x, y in zip(draw.real_cf["audio"], computed, strict=True))
    loss = losses.ImageBindDCLoss(num_freqs=24, sigma=1.0)
    cached = loss(real, syn, generator=torch.Generator().manual_seed(1), bank=bank, class_id=7)
    fresh = losses.imagebinddc_loss(real, syn, freqs=bank.freqs[b], freqs_joint=bank.joint[b])
    assert all(torch.allclose(cached[k], fresh[k], atol=1e-6) for k in cached)
    assert cached["joint"] > 0


def test_configured_baselines_are_their_functions():
    from ibdc_cli.config import CondenseConfig

    real, syn = _class_sets(4), _class_sets(5, n=3)
    assert torch.equal(losses.DMLoss.from_config(CondenseConfig())(real, syn)["total"], losses.dm_loss(real, syn))
    avdd = losses.AVDDLoss.from_config(CondenseConfig(lambda_cross=0.25, lambda_joint=2.0))
    assert (avdd.lambda_icm, avdd.lambda_cgm) == (0.25, 2.0)
    expected = losses.avdd_loss(real, syn, lambda_icm=0.25, lambda_cgm=2.0)
    assert all(torch.equal(v, expected[k]) for k, v in avdd(real, syn).items())
