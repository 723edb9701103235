"""Condensation losses: characteristic-function discrepancy (CFD), ImageBindDC's tri-level terms, DM, AVDD.

Pure tensor functions: no global state, no I/O. Each loss takes the embeddings of ONE class as a dict
``modality -> [N, D]`` (real) and ``modality -> [M, D]`` (synthetic); row i of every real tensor comes
from the same real example, row j of every synthetic tensor from the same synthetic example. The
caller sums the losses over classes. Every multimodal loss L2-normalises its inputs itself (SPEC §3).

Equation numbers refer to Min et al., "ImageBindDC", AAAI 2026. The CFD reductions are the paper's
Eq. 3 (``"eq3"``) and the square-rooted form of NCFM (Wang et al., CVPR 2025; ``"ncfm"``), which the
ImageBindDC authors' code uses with alpha = beta = 0.5.

Example::

    freqs = {m: sample_frequencies(4096, 1024, generator=g) for m in ("image", "audio")}
    losses = imagebinddc_loss(real, syn, freqs=freqs, freqs_joint=sample_frequencies(4096, 2048, generator=g))
    losses["total"].backward()
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

CF = tuple[Tensor, Tensor]
"""An empirical characteristic function sampled at K frequencies: (real part [K], imaginary part [K])."""

Reduction = Literal["ncfm", "eq3"]
CrossForm = Literal["paper", "hybrid", "none"]
JointForm = Literal["paper", "paper-cos", "cf", "none"]

REDUCTIONS: tuple[str, ...] = ("ncfm", "eq3")
CROSS_FORMS: tuple[str, ...] = ("paper", "hybrid", "none")
JOINT_FORMS: tuple[str, ...] = ("paper", "paper-cos", "cf", "none")

# The product's default objective: CondenseConfig takes its defaults from here (one home per default).
DEFAULT_REDUCTION: Reduction = "eq3"
"""Eq. 3 at alpha = beta is a Monte-Carlo squared CF distance, an MMD (docs/method.md)."""
DEFAULT_CROSS_FORM: CrossForm = "none"
"""The paper form measurably hurt on fsdd-mnist val (docs/method.md): opt in with ``cross_form="paper"``."""
DEFAULT_JOINT_FORM: JointForm = "cf"
"""The CFD of the concatenated modalities: the characteristic function of the joint distribution."""
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 0.5
DEFAULT_LAMBDA = 1.0
"""Default weight of each of the uni-, cross- and joint-modal terms."""

CF_CHUNK_ELEMENTS = 2**24
"""Above this many projections (N * K) the CF is computed in row chunks, recomputed in backward."""

SQRT_EPS = 1e-12
"""Added under every square root so that gradients stay finite where the argument is 0."""


def l2n(x: Tensor) -> Tensor:
    """L2-normalise the rows of ``x`` ([N, D] -> [N, D]); all-zero rows stay zero."""
    return F.normalize(x, dim=-1)


# --------------------------------------------------------------------------------------------------
# Characteristic-function discrepancy (paper Eq. 1-3)


def sample_frequencies(
    num_freqs: int,
    dim: int,
    sigma: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw CFD frequencies ``t_k ~ N(0, sigma^2 I)`` -> ``[num_freqs, dim]``.

    The draw happens on the generator's device and is then moved to ``device``, so one seed gives the
    same frequencies on CPU and GPU.
    """
    draw_device = generator.device if generator is not None else device
    freqs = torch.randn(num_freqs, dim, generator=generator, dtype=dtype, device=draw_device)
    return (freqs * sigma).to(device) if device is not None else freqs * sigma


def _cf_sums(x: Tensor, freqs: Tensor) -> CF:
    proj = x @ freqs.T  # [n, K]
    return proj.cos().sum(0), proj.sin().sum(0)


def characteristic_function(x: Tensor, freqs: Tensor, *, max_elements: int = CF_CHUNK_ELEMENTS) -> CF:
    """Empirical characteristic function ``phi_X(t_k) = mean_i exp(j t_k^T x_i)`` (paper Eq. 1).

    Args:
        x: samples ``[N, D]``.
        freqs: frequencies ``[K, D]`` (cast to ``x``'s dtype and device).
        max_elements: when ``N * K`` exceeds this, rows are processed in chunks of
            ``max_elements // K``; under autograd each chunk's ``[n, K]`` projection is recomputed in
            backward (activation checkpointing), so memory stays ``O(max_elements)`` either way.

    Returns:
        ``(mean_i cos(t_k^T x_i), mean_i sin(t_k^T x_i))``, each ``[K]``.
    """
    if x.ndim != 2 or freqs.ndim != 2 or x.shape[1] != freqs.shape[1]:
        raise ValueError(f"need x [N, D] and freqs [K, D], got {tuple(x.shape)} and {tuple(freqs.shape)}")
    n, k = x.shape[0], freqs.shape[0]
    if n == 0:
        raise ValueError("the characteristic function of an empty set is undefined")
    freqs = freqs.to(dtype=x.dtype, device=x.device)
    if n * k <= max_elements:
        proj = x @ freqs.T
        return proj.cos().mean(0), proj.sin().mean(0)
    rows = max(1, max_elements // k)
    recompute = torch.is_grad_enabled() and (x.requires_grad or freqs.requires_grad)
    real = imag = x.new_zeros(k)
    for chunk in x.split(rows):
        if recompute:
            r, i = checkpoint(_cf_sums, chunk, freqs, use_reentrant=False)
        else:
            r, i = _cf_sums(chunk, freqs)
        real, imag = real + r, imag + i
    return real / n, imag / n


def modality_cfs(sets: Mapping[str, Tensor], freqs: Mapping[str, Tensor] | Tensor) -> dict[str, CF]:
    """Characteristic functions of the L2-normalised sets, per modality: the ``real_cf`` of a frequency
    bank (the real side never changes, so its CF at fixed frequencies can be computed once)."""
    return {m: characteristic_function(l2n(x), _freqs_for(freqs, m)) for m, x in sets.items()}


def cfd_terms(phi_x: CF, phi_y: CF) -> CF:
    """Amplitude and phase terms of the CFD (paper Eq. 2), each ``[K]``.

    ``amp = (|phi_X| - |phi_Y|)^2`` and ``phase = 2 |phi_X| |phi_Y| (1 - cos(arg phi_X - arg phi_Y))``,
    so ``amp + phase = |phi_X - phi_Y|^2``. No atan2 (undefined at phi = 0): since
    ``|phi_X| |phi_Y| cos(arg phi_X - arg phi_Y) = Re(phi_X conj(phi_Y))``, the phase term is
    ``2 (|phi_X| |phi_Y| - Re(phi_X conj(phi_Y))) = |phi_X - phi_Y|^2 - amp``. We evaluate the right-hand
    form, with ``|phi_X| - |phi_Y| = (|phi_X|^2 - |phi_Y|^2) / (|phi_X| + |phi_Y|)``, because it is built
    from differences of the two CFs: in float32 (D = 64, K = 4096) the ``2 (|.||.| - Re)`` form leaves
    ~2e-8 of rounding per frequency, a floor of ~5e-5 for the "ncfm" CFD of identical sets, larger than
    the true CFD of sets whose rows differ by 1e-4; this form is exactly 0 there and accurate to ~1e-12.
    The moduli carry ``SQRT_EPS`` under the root, so the amplitude is differentiable at ``|phi| = 0``.
    """
    (xr, xi), (yr, yi) = phi_x, phi_y
    dr, di = xr - yr, xi - yi
    norm_x = torch.sqrt(xr * xr + xi * xi + SQRT_EPS)
    norm_y = torch.sqrt(yr * yr + yi * yi + SQRT_EPS)
    amp = ((dr * (xr + yr) + di * (xi + yi)) / (norm_x + norm_y)) ** 2
    # phase >= 0 in exact arithmetic (||phi_X| - |phi_Y|| <= |phi_X - phi_Y|); the clamp removes rounding.
    phase = (dr * dr + di * di - amp).clamp(min=0)
    return amp, phase


def cfd_from_cf(
    phi_x: CF,
    phi_y: CF,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    reduction: Reduction = "ncfm",
) -> Tensor:
    """CFD between two sets given their characteristic functions at the same K frequencies -> scalar.

    ``"ncfm"``: ``mean_k sqrt(alpha * amp_k + beta * phase_k + eps)`` (NCFM; the authors' code).
    ``"eq3"``: ``mean_k (alpha * amp_k + beta * phase_k)`` (paper Eq. 3).
    At ``alpha = beta = a``: ``eq3 = a * mean_k |phi_X - phi_Y|^2`` and
    ``ncfm = sqrt(a) * mean_k |phi_X - phi_Y|``.
    """
    amp, phase = cfd_terms(phi_x, phi_y)
    weighted = alpha * amp + beta * phase
    if reduction == "ncfm":
        return torch.sqrt(weighted + SQRT_EPS).mean()
    if reduction == "eq3":
        return weighted.mean()
    raise ValueError(f"unknown CFD reduction {reduction!r}; choose one of {REDUCTIONS}")


def cfd(
    x: Tensor,
    y: Tensor,
    freqs: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    reduction: Reduction = "ncfm",
) -> Tensor:
    """CFD between sample sets ``x [N, D]`` and ``y [M, D]`` at frequencies ``freqs [K, D]`` -> scalar.

    No normalisation here: this is the discrepancy of the sets as given (see ``cfd_from_cf``).
    """
    return cfd_from_cf(
        characteristic_function(x, freqs),
        characteristic_function(y, freqs),
        alpha=alpha,
        beta=beta,
        reduction=reduction,
    )


# --------------------------------------------------------------------------------------------------
# Tri-level terms (paper Eq. 5-13)


def _modalities(real: Mapping[str, Tensor], syn: Mapping[str, Tensor]) -> list[str]:
    if set(real) != set(syn):
        raise ValueError(f"real and synthetic modalities differ: {sorted(real)} vs {sorted(syn)}")
    if not real:
        raise ValueError("no modalities given")
    return list(real)


def _pairs(real: Mapping[str, Tensor], syn: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    return list(itertools.combinations(_modalities(real, syn), 2))


def _freqs_for(freqs: Mapping[str, Tensor] | Tensor, modality: str) -> Tensor:
    return freqs if isinstance(freqs, Tensor) else freqs[modality]


def _zero(syn: Mapping[str, Tensor]) -> Tensor:
    """A scalar 0 on the synthetic tensors' device and dtype that stays in their autograd graph."""
    return next(iter(syn.values())).sum() * 0.0


def uni_modal_loss(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    freqs: Mapping[str, Tensor] | Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    reduction: Reduction = "ncfm",
    real_cf: Mapping[str, CF] | None = None,
) -> Tensor:
    """Uni-modal distribution matching ``sum_m CFD(R_m, S_m)`` (paper Eq. 5-7) -> scalar.

    Args:
        real: ``modality -> [N, D_m]``; syn: ``modality -> [M, D_m]``.
        freqs: ``modality -> [K, D_m]``, or one ``[K, D]`` tensor for all modalities.
        real_cf: optional precomputed real CFs per modality (``modality_cfs(real, freqs)``, computed at
            the SAME frequencies); a modality found here skips its real-side CF.
    """
    total = _zero(syn)
    for m in _modalities(real, syn):
        f = _freqs_for(freqs, m)
        if real_cf is not None and m in real_cf:
            phi_real = real_cf[m]
        else:
            phi_real = characteristic_function(l2n(real[m]), f)
        phi_syn = characteristic_function(l2n(syn[m]), f)
        total = total + cfd_from_cf(phi_real, phi_syn, alpha=alpha, beta=beta, reduction=reduction)
    return total


def cross_modal_paper(real: Mapping[str, Tensor], syn: Mapping[str, Tensor]) -> Tensor:
    """Cross-modal co-activation matching (paper Eq. 8-11) -> scalar.

    ``sum_(a,b) 1 - cos(mean_i(r_a,i * r_b,i), mean_j(s_a,j * s_b,j))`` over all modality pairs, ``*``
    elementwise: the per-dimension co-activation of paired modalities, real vs synthetic.
    Zero (in the graph) with one modality.
    """
    total = _zero(syn)
    for a, b in _pairs(real, syn):
        real_coact = (l2n(real[a]) * l2n(real[b])).mean(0)
        syn_coact = (l2n(syn[a]) * l2n(syn[b])).mean(0)
        total = total + 1 - F.cosine_similarity(real_coact, syn_coact, dim=0)
    return total


def cross_modal_hybrid(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    freqs: Mapping[str, Tensor] | Tensor,
    *,
    generator: torch.Generator | None = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    reduction: Reduction = "ncfm",
) -> Tensor:
    """Cross-modal CFD of the authors' retrieval script -> scalar.

    ``sum_(a,b) CFD({r_a,p(j) + s_b,j}_j, {r_b,p(j) + s_a,j}_j)``, where each synthetic row j is paired
    with a random real row ``p(j)`` of its class. ``p`` is drawn once per call with ``generator`` and
    shared by all pairs. Needs equal dimensions across modalities; ``freqs`` is ``[K, D]`` or a dict, in
    which case pair (a, b) uses ``freqs[a]``. Zero (in the graph) with one modality.

    When ``p`` is independent of the synthetic rows, both sides' distributions depend only on the
    marginals, so in expectation this term adds nothing beyond the uni-modal one (SPEC §3).
    """
    pairs = _pairs(real, syn)
    if not pairs:
        return _zero(syn)
    anchor = next(iter(syn.values()))
    n_real = next(iter(real.values())).shape[0]
    draw_device = generator.device if generator is not None else anchor.device
    pick = torch.randint(n_real, (anchor.shape[0],), generator=generator, device=draw_device)
    pick = pick.to(next(iter(real.values())).device)
    total = _zero(syn)
    for a, b in pairs:
        r_a, r_b = l2n(real[a])[pick], l2n(real[b])[pick]
        s_a, s_b = l2n(syn[a]), l2n(syn[b])
        total = total + cfd(r_a + s_b, r_b + s_a, _freqs_for(freqs, a), alpha=alpha, beta=beta, reduction=reduction)
    return total


def joint_modal_paper(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    *,
    rho: Literal["dot", "cos"] = "dot",
) -> Tensor:
    """Joint-modal matching of the paper (Eq. 12-13) -> scalar.

    ``sum_(a,b) 1 - rho(mean(r_a) * mean(s_b), mean(r_b) * mean(s_a))`` over all modality pairs, ``*``
    elementwise, ``rho`` the plain dot product printed in the paper (``"dot"``) or the cosine
    (``"cos"``). The dot of two elementwise products of (means of) unit vectors is ~0 in high
    dimension (at most ``max_i mu_i^2`` for unit means), so the ``"dot"`` term stays ~1 whatever the
    synthetic set. Measured at D = 256 (tests/test_losses.py): 1 - 1e-6 for random unit vectors, whether
    the synthetic set is random or equal to the real one; for a tight class cluster, 0.99998 with a
    random synthetic set vs 0.997 when it equals the real set. The ``"cos"`` form goes to 0 at a
    perfect match. Zero (in the graph) with one modality.
    """
    if rho not in ("dot", "cos"):
        raise ValueError(f"unknown rho {rho!r}; choose 'dot' or 'cos'")
    total = _zero(syn)
    for a, b in _pairs(real, syn):
        mu_ra, mu_rb = l2n(real[a]).mean(0), l2n(real[b]).mean(0)
        mu_sa, mu_sb = l2n(syn[a]).mean(0), l2n(syn[b]).mean(0)
        u, v = mu_ra * mu_sb, mu_rb * mu_sa
        similarity = (u * v).sum() if rho == "dot" else F.cosine_similarity(u, v, dim=0)
        total = total + 1 - similarity
    return total


def _concat(sets: Mapping[str, Tensor], order: list[str]) -> Tensor:
    return torch.cat([l2n(sets[m]) for m in order], dim=1)


def joint_modal_cf(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    freqs_joint: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    reduction: Reduction = "ncfm",
    real_joint_cf: CF | None = None,
) -> Tensor:
    """Joint CFD ``CFD([r_a; r_b; ...], [s_a; s_b; ...])`` over the concatenation of ALL modalities.

    The CF of the joint distribution determines it completely (Lévy) and contains the marginals.
    Modalities are concatenated in the order of ``real``'s keys, each L2-normalised: real ``[N, sum D_m]``,
    synthetic ``[M, sum D_m]``; ``freqs_joint`` is ``[K, sum D_m]``. ``real_joint_cf`` optionally gives
    the real side's CF at ``freqs_joint``. Zero (in the graph) with one modality.
    """
    order = _modalities(real, syn)
    if len(order) < 2:
        return _zero(syn)
    if real_joint_cf is None:
        real_joint_cf = characteristic_function(_concat(real, order), freqs_joint)
    phi_syn = characteristic_function(_concat(syn, order), freqs_joint)
    return cfd_from_cf(real_joint_cf, phi_syn, alpha=alpha, beta=beta, reduction=reduction)


def imagebinddc_loss(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    *,
    freqs: Mapping[str, Tensor] | None,
    freqs_joint: Tensor | None,
    lambda_uni: float = DEFAULT_LAMBDA,
    lambda_cross: float = DEFAULT_LAMBDA,
    lambda_joint: float = DEFAULT_LAMBDA,
    cross_form: CrossForm = DEFAULT_CROSS_FORM,
    joint_form: JointForm = DEFAULT_JOINT_FORM,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    reduction: Reduction = DEFAULT_REDUCTION,
    generator: torch.Generator | None = None,
    real_cf: Mapping[str, CF] | None = None,
    real_joint_cf: CF | None = None,
) -> dict[str, Tensor]:
    """ImageBindDC's tri-level objective for one class (SPEC §3).

    ``total = lambda_uni * uni + lambda_cross * cross + lambda_joint * joint``. The keyword defaults are
    the product's default objective (the ``DEFAULT_*`` constants, which ``CondenseConfig`` uses too):
    uni + joint CF, no cross term, Eq. 3 reduction. The paper's printed objective is
    ``cross_form="paper", joint_form="paper"`` (``ibdc condense --preset paper``).

    Args:
        real: ``modality -> [N, D_m]``, rows paired across modalities; syn: ``modality -> [M, D_m]``.
        freqs: ``modality -> [K, D_m]``; needed for the uni term and ``cross_form="hybrid"``.
        freqs_joint: ``[K, sum D_m]``; needed for ``joint_form="cf"``.
        cross_form: ``"paper"`` (Eq. 8-11), ``"hybrid"`` (CFD of crossed sums) or ``"none"``.
        joint_form: ``"paper"`` (Eq. 12-13, dot), ``"paper-cos"`` (cosine), ``"cf"`` (joint CFD), ``"none"``.
        alpha, beta, reduction: CFD settings (``cfd_from_cf``) for every CFD term.
        generator: draws the real/synthetic pairing of ``cross_form="hybrid"``.
        real_cf, real_joint_cf: precomputed real CFs at ``freqs`` / ``freqs_joint`` (frequency bank).

    Returns:
        ``{"uni", "cross", "joint", "total"}`` scalars; the terms unweighted, ``total`` weighted. A term
        whose lambda is 0 or whose form is ``"none"``, or a paired term given one modality, is reported as 0.
    """
    if cross_form not in CROSS_FORMS:
        raise ValueError(f"unknown cross form {cross_form!r}; choose one of {CROSS_FORMS}")
    if joint_form not in JOINT_FORMS:
        raise ValueError(f"unknown joint form {joint_form!r}; choose one of {JOINT_FORMS}")
    cf_settings = {"alpha": alpha, "beta": beta, "reduction": reduction}
    needs_freqs = lambda_uni != 0 or (lambda_cross != 0 and cross_form == "hybrid")
    if needs_freqs and freqs is None:
        raise ValueError("freqs is required for the uni-modal term and the hybrid cross-modal term")
    if len(_modalities(real, syn)) < 2:  # the paired terms need two modalities; with one there is only uni
        lambda_cross = lambda_joint = 0.0
    if lambda_joint != 0 and joint_form == "cf" and freqs_joint is None:
        raise ValueError("freqs_joint is required for joint_form='cf'")

    uni = cross = joint = _zero(syn)
    if lambda_uni != 0:
        uni = uni_modal_loss(real, syn, freqs, real_cf=real_cf, **cf_settings)
    if lambda_cross != 0 and cross_form == "paper":
        cross = cross_modal_paper(real, syn)
    elif lambda_cross != 0 and cross_form == "hybrid":
        cross = cross_modal_hybrid(real, syn, freqs, generator=generator, **cf_settings)
    if lambda_joint != 0 and joint_form in ("paper", "paper-cos"):
        joint = joint_modal_paper(real, syn, rho="dot" if joint_form == "paper" else "cos")
    elif lambda_joint != 0 and joint_form == "cf":
        joint = joint_modal_cf(real, syn, freqs_joint, real_joint_cf=real_joint_cf, **cf_settings)
    total = lambda_uni * uni + lambda_cross * cross + lambda_joint * joint
    return {"uni": uni, "cross": cross, "joint": joint, "total": total}


# --------------------------------------------------------------------------------------------------
# Frequencies: fresh per step, or a fixed bank whose real-side CFs are cached


@dataclass(frozen=True)
class FrequencyDraw:
    """The frequencies of one step, and the real side's CFs at them when they come from a bank.

    ``freqs``: ``modality -> [K, D_m]``; ``joint``: ``[K, sum D_m]`` or None (no joint CF term);
    ``real_cf`` / ``real_joint_cf``: the class's real CFs at ``freqs`` / ``joint`` (None: compute them).
    """

    freqs: dict[str, Tensor]
    joint: Tensor | None
    real_cf: dict[str, CF] | None = None
    real_joint_cf: CF | None = None


@dataclass
class FrequencyBank:
    """B fixed frequency draws shared by every class, and each class's real-side CFs under each draw.

    The real rows of a class never change, so their CFs at fixed frequencies are computed once (over all
    of the class's rows) instead of once per step: a step's cost no longer grows with the class size.
    Build it with ``FrequencyBank.draw``, add the classes a process condenses with ``add_class``, and
    take one draw per step with ``sample``.
    """

    freqs: list[dict[str, Tensor]]
    """B draws of ``modality -> [K, D_m]``."""
    joint: list[Tensor | None]
    """B joint draws ``[K, sum D_m]`` (None without a joint CF term)."""
    real_cf: dict[int, list[dict[str, CF]]] = field(default_factory=dict)
    """``class id -> B x (modality -> CF)``."""
    real_joint_cf: dict[int, list[CF]] = field(default_factory=dict)
    """``class id -> B x CF`` of the concatenated modalities."""

    @classmethod
    def draw(
        cls,
        size: int,
        dims: Mapping[str, int],
        num_freqs: int,
        sigma: float,
        *,
        joint: bool,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> FrequencyBank:
        """``size`` draws of ``num_freqs`` frequencies per modality (``dims``: ``modality -> D_m``), in
        the order of ``dims``; with ``joint``, then ``size`` draws over the concatenation."""
        freqs = [
            {m: sample_frequencies(num_freqs, d, sigma, generator=generator).to(device) for m, d in dims.items()}
            for _ in range(size)
        ]
        total = sum(dims.values())
        joint_freqs = [
            sample_frequencies(num_freqs, total, sigma, generator=generator).to(device) if joint else None
            for _ in range(size)
        ]
        return cls(freqs=freqs, joint=joint_freqs)

    def __len__(self) -> int:
        return len(self.freqs)

    def add_class(self, class_id: int, real: Mapping[str, Tensor]) -> None:
        """Cache the real CFs of class ``class_id`` (``real``: ``modality -> [N, D_m]``, all its rows)."""
        self.real_cf[class_id] = [modality_cfs(real, f) for f in self.freqs]
        if self.joint and self.joint[0] is not None:
            concat = torch.cat([real[m] for m in self.freqs[0]], dim=1)
            self.real_joint_cf[class_id] = [characteristic_function(concat, jf) for jf in self.joint]

    def drop_class(self, class_id: int) -> None:
        """Forget class ``class_id``'s cached CFs (once it is condensed)."""
        self.real_cf.pop(class_id, None)
        self.real_joint_cf.pop(class_id, None)

    def sample(self, class_id: int, generator: torch.Generator, *, joint: bool) -> FrequencyDraw:
        """One of the B draws (uniformly, with ``generator``) with class ``class_id``'s cached real CFs."""
        b = int(torch.randint(len(self.freqs), (1,), generator=generator))
        return FrequencyDraw(
            freqs=self.freqs[b],
            joint=self.joint[b] if joint else None,
            real_cf=self.real_cf[class_id][b],
            real_joint_cf=self.real_joint_cf[class_id][b] if joint else None,
        )


# --------------------------------------------------------------------------------------------------
# The losses as configured objects: configure once (``from_config``), call with one class's tensors


@dataclass(frozen=True)
class ImageBindDCLoss:
    """ImageBindDC's tri-level objective (``imagebinddc_loss``), configured once.

    ``loss(real, syn, generator=g)`` draws fresh frequencies with ``g`` (``num_freqs`` per modality,
    scale ``sigma``) and returns ``{"uni", "cross", "joint", "total"}``; with ``bank=`` and ``class_id=``
    it takes one of the bank's fixed draws and the class's cached real CFs instead.

    Example::

        loss = ImageBindDCLoss(num_freqs=256, sigma=1.0)
        terms = loss({"image": r_i, "audio": r_a}, {"image": s_i, "audio": s_a}, generator=g)
        terms["total"].backward()
    """

    num_freqs: int
    sigma: float
    lambda_uni: float = DEFAULT_LAMBDA
    lambda_cross: float = DEFAULT_LAMBDA
    lambda_joint: float = DEFAULT_LAMBDA
    cross_form: CrossForm = DEFAULT_CROSS_FORM
    joint_form: JointForm = DEFAULT_JOINT_FORM
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    reduction: Reduction = DEFAULT_REDUCTION

    @classmethod
    def from_config(cls, config) -> ImageBindDCLoss:
        """From a ``CondenseConfig`` (its --num-freqs, --sigma, --lambda-*, --cross/joint-form, --alpha,
        --beta, --cf-reduction)."""
        return cls(
            num_freqs=config.num_freqs,
            sigma=config.sigma,
            lambda_uni=config.lambda_uni,
            lambda_cross=config.lambda_cross,
            lambda_joint=config.lambda_joint,
            cross_form=config.cross_form,
            joint_form=config.joint_form,
            alpha=config.alpha,
            beta=config.beta,
            reduction=config.cf_reduction,
        )

    def has_joint_cf(self, modalities: int) -> bool:
        """Whether the joint term is a CF over the concatenation (it then needs joint frequencies)."""
        return self.joint_form == "cf" and bool(self.lambda_joint) and modalities > 1

    def frequencies(
        self,
        syn: Mapping[str, Tensor],
        generator: torch.Generator | None,
        bank: FrequencyBank | None = None,
        class_id: int | None = None,
    ) -> FrequencyDraw:
        """This step's frequencies: a draw of ``bank`` (for ``class_id``), else fresh ones, drawn per
        modality in the order of ``syn`` and then over the concatenation (when the joint term needs it)."""
        joint = self.has_joint_cf(len(syn))
        if bank is not None:
            return bank.sample(class_id, generator, joint=joint)
        device = next(iter(syn.values())).device
        freqs = {
            m: sample_frequencies(self.num_freqs, x.shape[1], self.sigma, generator=generator).to(device)
            for m, x in syn.items()
        }
        total = sum(x.shape[1] for x in syn.values())
        joint_freqs = (
            sample_frequencies(self.num_freqs, total, self.sigma, generator=generator).to(device) if joint else None
        )
        return FrequencyDraw(freqs=freqs, joint=joint_freqs)

    def __call__(
        self,
        real: Mapping[str, Tensor],
        syn: Mapping[str, Tensor],
        *,
        generator: torch.Generator | None = None,
        bank: FrequencyBank | None = None,
        class_id: int | None = None,
    ) -> dict[str, Tensor]:
        draw = self.frequencies(syn, generator, bank, class_id)
        return imagebinddc_loss(
            real,
            syn,
            freqs=draw.freqs,
            freqs_joint=draw.joint,
            lambda_uni=self.lambda_uni,
            lambda_cross=self.lambda_cross,
            lambda_joint=self.lambda_joint,
            cross_form=self.cross_form,
            joint_form=self.joint_form,
            alpha=self.alpha,
            beta=self.beta,
            reduction=self.reduction,
            generator=generator,
            real_cf=draw.real_cf,
            real_joint_cf=draw.real_joint_cf,
        )


@dataclass(frozen=True)
class DMLoss:
    """Distribution matching (``dm_loss``) as a configured loss: ``{"total"}``. It draws nothing, so
    ``generator``, ``bank`` and ``class_id`` are accepted (one call shape for every method) and unused."""

    @classmethod
    def from_config(cls, config) -> DMLoss:
        return cls()

    def __call__(self, real, syn, *, generator=None, bank=None, class_id=None) -> dict[str, Tensor]:
        return {"total": dm_loss(real, syn)}


@dataclass(frozen=True)
class AVDDLoss:
    """AVDD (``avdd_loss``) configured once: ``{"dm", "icm", "cgm", "total"}``. ``ibdc condense`` weighs
    its implicit cross matching with --lambda-cross and its cross-modal gap matching with --lambda-joint.
    Like DM it draws nothing."""

    lambda_icm: float = 1.0
    lambda_cgm: float = 1.0

    @classmethod
    def from_config(cls, config) -> AVDDLoss:
        return cls(lambda_icm=config.lambda_cross, lambda_cgm=config.lambda_joint)

    def __call__(self, real, syn, *, generator=None, bank=None, class_id=None) -> dict[str, Tensor]:
        return avdd_loss(real, syn, lambda_icm=self.lambda_icm, lambda_cgm=self.lambda_cgm)


# --------------------------------------------------------------------------------------------------
# Baselines


def dm_loss(real: Mapping[str, Tensor], syn: Mapping[str, Tensor]) -> Tensor:
    """Distribution matching (Zhao & Bilen, WACV 2023) -> scalar.

    ``sum_m ||mean(R_m) - mean(S_m)||^2`` on L2-normalised embeddings: the squared MMD with a linear
    kernel, per modality.
    """
    total = _zero(syn)
    for m in _modalities(real, syn):
        total = total + (l2n(real[m]).mean(0) - l2n(syn[m]).mean(0)).pow(2).sum()
    return total


def avdd_loss(
    real: Mapping[str, Tensor],
    syn: Mapping[str, Tensor],
    *,
    lambda_icm: float = 1.0,
    lambda_cgm: float = 1.0,
) -> dict[str, Tensor]:
    """Audio-visual dataset distillation (Kushwaha et al., 2024) -> ``{"dm", "icm", "cgm", "total"}``.

    With ``mu`` the mean of L2-normalised embeddings and pairs (a, b) over all modality pairs:

    - ``dm = sum_m ||mu(R_m) - mu(S_m)||^2`` (``dm_loss``),
    - implicit cross matching ``icm = sum_(a,b) ||(mu r_a - mu s_b) + (mu r_b - mu s_a)||^2``,
    - cross-modal gap matching ``cgm = sum_(a,b) ||(mu r_a - mu r_b) - (mu s_a - mu s_b)||^2``,
    - ``total = dm + lambda_icm * icm + lambda_cgm * cgm``.

    With ``d_m = mu r_m - mu s_m`` the two extra terms are ``||d_a + d_b||^2`` and ``||d_a - d_b||^2``,
    whose cross products cancel: ``icm + cgm = sum_(a,b) 2 (||d_a||^2 + ||d_b||^2) = 2 (K - 1) dm`` for K
    modalities. So at ``lambda_icm = lambda_cgm = lam`` AVDD is DM rescaled, ``total = (1 + 2 lam) dm``
    with two modalities (``(1 + 2 (K - 1) lam) dm`` in general); only unequal lambdas change the direction
    of the gradient.
    """
    order = _modalities(real, syn)
    mu_real = {m: l2n(real[m]).mean(0) for m in order}
    mu_syn = {m: l2n(syn[m]).mean(0) for m in order}
    dm = _zero(syn)
    for m in order:
        dm = dm + (mu_real[m] - mu_syn[m]).pow(2).sum()
    icm = cgm = _zero(syn)
    for a, b in itertools.combinations(order, 2):
        icm = icm + ((mu_real[a] - mu_syn[b]) + (mu_real[b] - mu_syn[a])).pow(2).sum()
        cgm = cgm + ((mu_real[a] - mu_real[b]) - (mu_syn[a] - mu_syn[b])).pow(2).sum()
    total = dm + lambda_icm * icm + lambda_cgm * cgm
    return {"dm": dm, "icm": icm, "cgm": cgm, "total": total}


def info_nce(x: Tensor, y: Tensor, temperature: float, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP's loss) between paired rows `x` and `y` `[B, D]` (row i of each is one pair).

    Both sides are L2-normalised, ``logits = x̂ ŷᵀ / temperature`` `[B, B]`, and the loss is the mean of
    the x -> y and y -> x directions. The positive of row i is row i of the other side; with `labels`
    `[B]`, every row of the same label (SupCon's L_out, Khosla et al. 2020, eq. 2: the mean
    log-likelihood over the positives), for pairs that are only meaningful up to class. Without labels
    it is cross-entropy against the diagonal, exactly; with all labels distinct it equals that up to
    rounding.

    Example::

        loss = info_nce(audio_heads(a), text_heads(t), temperature=0.07)   # a, t: [B, D] paired rows
    """
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature
    if labels is None:
        target = torch.arange(len(x), device=x.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    positive = (labels[:, None] == labels[None, :]).float()  # [B, B]
    x_to_y = -(positive * logits.log_softmax(dim=1)).sum(1) / positive.sum(1)
    y_to_x = -(positive.T * logits.T.log_softmax(dim=1)).sum(1) / positive.sum(0)
    return (x_to_y.mean() + y_to_x.mean()) / 2
