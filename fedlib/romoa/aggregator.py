"""The Romoa aggregation rule as an engine aggregator (Algorithm 2, server side).

See the package docstring (``fedlib.romoa``) for the readings and their justification.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from . import factors as fac
from . import meanshift as ms
from . import sanitizing as san
from . import similarity as sim
from .options import CHOICES, READING_BANDWIDTH, READINGS  # noqa: F401  (re-exported)
from .options import check_numbers, resolve_bandwidth, resolve_options
from .reporting import RomoaReport


class Romoa(RomoaReport):
    """Romoa (Mao et al., 2021): lookahead similarity → mean shift → sanitizing factors.

    ``Romoa(reading="literal" | "calibrated", **options)`` is an engine aggregator:
    ``observe(updates, ctx)`` on lookahead iterations and ``__call__(updates, ctx)`` at sync
    points both update the factors F (Algorithm 2, lines 16–19); ``__call__`` also returns
    Σᵢ Fⁱ ⊙ Δᵢ (line 21). In the synchronous protocol every call is a sync point.

    ``reading`` picks a *preset* of the named options below (:data:`READINGS` and
    :data:`READING_BANDWIDTH`): ``"literal"`` = every equation as printed; ``"calibrated"`` =
    four measurement calibrations (``selection="path"``, ``elementwise="cosine"``,
    ``pearson="centered"``, ``bandwidth="robust"``) plus the cluster penalty
    (``generating="cluster_penalty"``), which replaces the printed Eqs. 8–10. An option passed
    explicitly overrides the preset's. :meth:`preview` answers "what would this iteration
    give?" without changing any state (for white-box attacks).

    Options (``None`` = the preset's choice; see ``fedlib.romoa`` for why):

    * ``selection_ratio`` — the share each participant selects in Eq. 4 (paper: γ = 1/n;
      ``None`` = 1/n). The paper's *moving rate* γ is the engine's ``moving_rate``.
    * ``beta`` — the residual rate β of Eq. 11 (paper: 1/2).
    * ``selection`` — rank by |θᵢ_t'| (``"parameter"``, literal) or by |θᵢ_t' − θ̄_t|
      (``"path"``, calibrated).
    * ``elementwise`` — Eq. 5 per coordinate, sign(a)·sign(ā) (``"sign"``, literal), or the
      cosine over the selected set (``"cosine"``, calibrated).
    * ``pearson`` — Eq. 7 as printed, cos/(std·std) (``"printed"``), or Pearson's r
      (``"centered"``).
    * ``generating`` — Eqs. 8–10 as m − c (``"signed"``), as 0 inside the majority cluster
      and −max(0, |m − c| − h)/h outside (``"cluster_penalty"``, calibrated; h the bandwidth), or
      as −max(0, |m − c| − κs)/s with s = 1.4826·MAD (``"standardized"``; ``tolerance`` is
      κ, default 2).
    * ``centroid`` — c_w of the majority cluster (``"majority"``, both readings) or of the
      participant's own cluster (``"own"``).
    * ``bandwidth`` — ``"auto"`` (scikit-learn's quantile rule, literal), ``"robust"`` (at
      least 3 robust standard deviations of the participants' values, calibrated) or a float;
      ``kernel`` (``"flat"`` or ``"gaussian"``) — the mean shift.
    * ``layers`` — ``"module"`` (a module's weight and bias form one layer, ``spec.layers``)
      or ``"tensor"`` (each parameter tensor is a layer).
    * ``report_samples`` — coordinates sampled (evenly spaced) for :meth:`report`.

    Attributes: ``weights`` (n,) — each participant's mean factor over coordinates (sums
    to 1; 0 for excluded rows); ``factors`` — the current F (n, d), a read-only view of the
    state (n·d floats: 135 MB for the Romoa MNIST CNN with n = 10); ``iteration`` — how many
    update matrices were seen; ``last_seconds`` — the server time of the last call.
    :meth:`report` returns plain lists/floats for plots (see there); :meth:`reset` forgets all.

    Non-finite policy: a row holding NaN/±Inf is excluded for that iteration with a
    ``RuntimeWarning``: its factor is 0 (F of the other rows is renormalised so that every
    column still sums to 1) and it takes no part in the measurements or the aggregate. All
    rows non-finite → ``ValueError``.

    Without a ``RoundContext`` the whole vector is one layer and θ_ref = 0 (so the literal
    selection ranks |Δᵢ|). If the participants change between calls (other ``client_ids``),
    known participants keep their factors, new ones start at 1/n, and columns are
    renormalised.
    """

    name = "romoa"

    def __init__(self, reading: str = "literal", *, selection_ratio: Optional[float] = None,
                 beta: float = 0.5, bandwidth: Optional[ms.Bandwidth] = None, kernel: str = "flat",
                 centroid: str = "majority", tolerance: float = 2.0, layers: str = "module",
                 selection: Optional[str] = None, elementwise: Optional[str] = None,
                 pearson: Optional[str] = None, generating: Optional[str] = None,
                 report_samples: int = 64):
        opts = resolve_options(reading, selection=selection, elementwise=elementwise,
                               pearson=pearson, generating=generating, centroid=centroid,
                               kernel=kernel, layers=layers)
        check_numbers(selection_ratio, beta, tolerance, report_samples)
        bandwidth = resolve_bandwidth(reading, bandwidth)
        self.reading = reading
        self.options = opts
        self.selection_ratio = selection_ratio
        self.beta = float(beta)
        self.bandwidth = bandwidth
        self.tolerance = float(tolerance)
        self.report_samples = report_samples
        self.reset()

    # ------------------------------------------------------------------ state
    _STATE = ("_F", "_ids", "_last", "_pending", "_weights", "iteration", "last_seconds",
              "_f_layer", "_clock")
    """Everything an iteration changes (:meth:`preview` restores it)."""

    def reset(self) -> None:
        """Forget all history: F back to 1/n at the next call."""
        self._F: Optional[Tensor] = None
        self._ids: Optional[list[int]] = None
        self._last: dict[str, Any] = {}
        self._pending: Optional[dict] = None
        self._weights: Optional[Tensor] = None
        self.iteration = 0
        self.last_seconds = 0.0
        self._f_layer: Optional[Tensor] = None
        self._profile: Optional[dict[str, float]] = None
        self._clock = 0.0

    @property
    def factors(self) -> Optional[Tensor]:
        """The current sanitizing factors F (n, d) (a view of the state: do not modify)."""
        return self._F

    @property
    def weights(self) -> Optional[Tensor]:
        """Each participant's mean factor over coordinates (n,), summing to 1 (one read of F,
        formed on first access after an iteration)."""
        if self._weights is None and self._F is not None:
            w = self._F.mean(dim=1)
            self._weights = w / w.sum()
        return self._weights

    def __repr__(self) -> str:
        return f"Romoa(reading={self.reading!r}, {self.options}, bandwidth={self.bandwidth!r})"

    # ------------------------------------------------------------- interface
    def __call__(self, updates: Tensor, ctx: Any = None) -> Tensor:
        """Update F with this iteration's uploads, then return Σᵢ Fⁱ ⊙ Δᵢ (Algorithm 2)."""
        start = time.perf_counter()
        x, keep = self._update(updates, ctx)
        F = self._F
        out = fac.sanitized_aggregation(x, F) if bool(keep.all()) \
            else fac.sanitized_aggregation(x[keep], F[keep])
        self._clock = time.perf_counter()
        self.last_seconds = self._clock - start
        return out

    def observe(self, updates: Tensor, ctx: Any = None) -> None:
        """A lookahead iteration between syncs: update F only (Algorithm 2, lines 16–19)."""
        self._update(updates, ctx)

    def preview(self, updates: Tensor, ctx: Any = None) -> tuple[Tensor, Tensor]:
        """What this iteration would give, (Σᵢ Fⁱ ⊙ Δᵢ, weights), leaving the state untouched.

        Algorithm 2 lines 16–21 on a copy of F: for white-box attacks that query the server's
        rule with candidate uploads (``fedlib.attacks.RomoaAdaptive``). Every attribute —
        F, ``iteration``, ``weights``, :meth:`report` — is as before the call.
        """
        saved = {k: getattr(self, k) for k in self._STATE}
        saved["_last"] = dict(self._last)
        saved["_profile"] = None if self._profile is None else dict(self._profile)
        if self._F is not None:
            self._F = self._F.clone()                          # _step updates F in place
        try:
            out = self(updates, ctx)
            w = self.weights.clone()
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
        return out, w

    # -------------------------------------------------------------- internals
    @staticmethod
    def _check(updates: Tensor) -> Tensor:
        if not isinstance(updates, Tensor):
            raise ValueError("romoa: updates must be a torch.Tensor (n, d), "
                             f"got {type(updates).__name__}")
        if updates.dim() != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
            raise ValueError("romoa: updates must be a non-empty (n, d) matrix, "
                             f"got {tuple(updates.shape)}")
        if not updates.is_floating_point():
            raise ValueError(f"romoa: updates must be floating point, got {updates.dtype}")
        return updates.detach()

    def _layers(self, d: int, ctx: Any) -> list[slice]:
        spec = getattr(ctx, "spec", None)
        if spec is None:
            return [slice(0, d)]
        if spec.dim != d:
            raise ValueError(f"romoa: ctx.spec has dimension {spec.dim}, updates have {d}")
        if self.options["layers"] == "module":
            return [sl for _, sl in spec.layers]
        return list(spec.slices.values())

    def _state(self, n: int, d: int, ids: Optional[list[int]], like: Tensor) -> Tensor:
        F = self._F
        fresh = F is None or F.shape[1] != d or F.dtype != like.dtype or F.device != like.device
        if fresh:
            if F is not None:
                warnings.warn("romoa: the update dimension/dtype/device changed; factors reset",
                              RuntimeWarning, stacklevel=4)
            self._ids = ids
            return fac.initial_factor(n, d, like.dtype, like.device)
        if ids is not None and self._ids is not None and ids != self._ids:
            old = {c: r for r, c in enumerate(self._ids)}
            rows = [old.get(c, -1) for c in ids]
            newF = fac.initial_factor(n, d, like.dtype, like.device)
            for r, src in enumerate(rows):
                if src >= 0:
                    newF[r] = F[src]
            newF /= newF.sum(0, keepdim=True)
            self._ids = ids
            return newF
        if F.shape[0] != n:
            warnings.warn(f"romoa: {F.shape[0]} participants before, {n} now, and no client_ids "
                          "to match them: factors reset to 1/n", RuntimeWarning, stacklevel=4)
            self._ids = ids
            return fac.initial_factor(n, d, like.dtype, like.device)
        self._ids = ids if ids is not None else self._ids
        return F

    def _update(self, updates: Tensor, ctx: Any) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        x = self._check(updates)
        n, d = x.shape
        layers = self._layers(d, ctx)
        theta = getattr(ctx, "theta", None)
        if theta is not None:
            if theta.shape != (d,):
                raise ValueError(f"romoa: ctx.theta must have shape ({d},), "
                                 f"got {tuple(theta.shape)}")
            theta = theta.detach().to(x.device, x.dtype)
        ids = getattr(ctx, "client_ids", None)
        ids = None if ids is None else [int(c) for c in torch.as_tensor(ids).tolist()]
        if ids is not None and len(ids) != n:
            raise ValueError(f"romoa: {len(ids)} client_ids for {n} updates")
        # A column sum is finite only if every entry is (NaN/Inf propagate): the lookahead
        # aggregate doubles as the finiteness check; rows are inspected only if it fails.
        self._clock = time.perf_counter()
        scanned = self._scan(x, theta, layers)
        keep = torch.ones(n, dtype=torch.bool, device=x.device)
        if not bool(torch.isfinite(scanned[0].sum())):         # Inf − Inf = NaN: any is caught
            keep = torch.isfinite(x).all(dim=1)
        F = self._state(n, d, ids, x)
        n_ok = int(keep.sum())
        if n_ok == n:
            self._step(x, layers, F, scanned)
        else:
            warnings.warn(f"romoa: excluded {n - n_ok} of {n} updates containing NaN/Inf "
                          "(factor 0 this iteration)", RuntimeWarning, stacklevel=3)
            if n_ok == 0:
                raise ValueError(f"romoa: all {n} updates contain NaN/Inf")
            Fk = F[keep]
            col = Fk.sum(0, keepdim=True)
            Fk = torch.where(col > 0, Fk / col.clamp_min(1e-30), torch.full_like(Fk, 1.0 / n_ok))
            xk = x[keep]
            self._step(xk, layers, Fk, self._scan(xk, theta, layers))
            F = torch.zeros_like(F)
            F[keep] = Fk
            self._last["kept"] = keep.tolist()
        self._F = F
        self._weights = None                                   # formed when asked for
        self.iteration += 1
        self._last.update(round=getattr(ctx, "round", None), sync=getattr(ctx, "sync", True),
                          n=n, d=d)
        self.last_seconds = time.perf_counter() - start
        return x, keep

    def _cluster(self, values: Tensor) -> ms.Clusters:
        """Mean shift of (G, n) values: one group per layer (or one for Eq. 5's cosine)."""
        return ms.cluster(values, self.bandwidth, self.options["kernel"])

    def _generate(self, m: Tensor, cl: ms.Clusters) -> Tensor:
        """Eqs. 8–10 for a (n, G) measurement whose G groups were clustered in ``cl``."""
        c = cl.centroid[None, :] if self.options["centroid"] == "majority" else cl.modes.T
        member = (cl.modes - cl.centroid[:, None]).abs().T <= cl.bandwidth[None, :]
        return fac.generating_function(m, c, self.options["generating"], scale=cl.scale[None, :],
                                       tolerance=self.tolerance, member=member,
                                       bandwidth=cl.bandwidth[None, :])

    def _tick(self, name: str) -> None:
        if self._profile is not None:
            now = time.perf_counter()
            self._profile[name] = self._profile.get(name, 0.0) + now - self._clock
            self._clock = now

    def _scan(self, x: Tensor, theta: Optional[Tensor],
              layers: list[slice]) -> tuple[Tensor, Tensor, sim.LayerMoments]:
        """The lookahead aggregate ā (−path, Fig. 3), Eq. 4's U and the Eqs. 5–7 moments."""
        o = self.options
        ratio = self.selection_ratio if self.selection_ratio is not None else 1.0 / x.shape[0]
        ref = theta if o["selection"] == "parameter" else None
        return sim.lookahead_scan(x, layers, ratio, ref,
                                  with_selected=o["elementwise"] == "cosine")

    def _step(self, x: Tensor, layers: list[slice], F: Tensor,
              scanned: tuple[Tensor, Tensor, sim.LayerMoments]) -> None:
        """One iteration of Algorithm 2's server (lines 16–19) on finite rows; F in place."""
        n, d = x.shape
        o = self.options
        beta = self.beta
        agg, selected, mom = scanned
        idx = san.indices(selected)
        self._tick("lookahead mean, selection and moments")
        l_cos = sim.layer_cosine(mom)                           # (n, L) float64
        l_pear = sim.layer_pearson(mom, centered=o["pearson"] == "centered")
        cl_cos, cl_pear = self._cluster(l_cos.T), self._cluster(l_pear.T)
        f_layer = torch.minimum(self._generate(l_cos, cl_cos), self._generate(l_pear, cl_pear))
        g_off = torch.clamp(f_layer, max=0.0)                  # Eq. 8 "0 otherwise" off U
        self._f_layer = f_layer
        starts = torch.tensor([sl.start for sl in layers], device=x.device)
        sm_off = torch.softmax(g_off, dim=0).to(x.dtype)       # (n, L)
        self._tick("layer mean shift")
        san.layer_momentum(F, layers, sm_off, beta)             # Eq. 11 off U, per layer
        self._tick("factor update")
        signs = None
        if o["elementwise"] == "sign":
            # Literal Eq. 5 on U: signs (n, |U|); its per-parameter mean shift is the table
            # lookup of the column's count pattern (n₊, n₋).
            table = ms.sign_pattern_table(n, self.bandwidth, o["kernel"])
            # U's indices are sorted, so each layer's columns form one range of them
            bounds = torch.searchsorted(idx, starts).tolist() + [idx.numel()]
            off = beta * sm_off
            signs = san.selected_signs(x, idx, agg)
            total = signs.sum(0)
            nonzero = signs.abs().sum(0)
            # pattern id n₊(n + 1) + n₋ with n₊ = (nz + tot)/2, n₋ = (nz − tot)/2
            pid = torch.add(nonzero * (0.5 * (n + 2)), total, alpha=0.5 * n).round_().long()
            sm_on = self._sign_softmax(signs, pid, table, f_layer, bounds, beta)
            for j in range(len(layers)):                      # Eq. 11 on U: F += β(sm − sm_off)
                sm_on[:, bounds[j]:bounds[j + 1]].sub_(off[:, j:j + 1])
            F.index_add_(1, idx, sm_on)
            row_total = signs.sum(dim=1).double()
            self._tick("element-wise (sign)")
            el_summary = row_total / max(idx.numel(), 1)
            el_centroid = float(table.centroid[pid.cpu()].mean()) if idx.numel() else float("nan")
            signs = torch.sign(agg)                            # for the report's samples
            g_on = (table, pid)
        else:
            s_cos = sim.selected_cosine(mom)                   # (n,)
            cl_el = self._cluster(s_cos[None, :])
            f_el = self._generate(s_cos[:, None], cl_el)       # (n, 1)
            g_on_layer = torch.minimum(f_el, f_layer)          # (n, L)
            sm_on_layer = torch.softmax(g_on_layer, dim=0).to(x.dtype)
            diff = beta * (sm_on_layer - sm_off)
            san.selected_momentum(F, layers, diff, selected)  # Eq. 11 on U
            g_on = g_on_layer
            el_summary, el_centroid = s_cos, float(cl_el.centroid[0])
            self._tick("element-wise (cosine)")
        self._remember(x, F, selected, idx, layers, l_cos, l_pear, cl_cos, cl_pear,
                       g_off, g_on, el_summary, el_centroid, signs)
        self._tick("report")

    def _sign_generating(self, signs: Tensor, pid: Tensor, table: ms.SignTable) -> Tensor:
        """Eq. 8 for sign measurements (n, m) with count patterns ``pid`` (m,)."""
        o = self.options
        dev, dt = signs.device, signs.dtype
        cent = table.centroid.to(dev, dt)[pid][None, :]
        own = table.own.to(dev, dt)[pid[None, :].expand_as(signs), (signs + 1).long()]
        h = table.bandwidth.to(dev, dt)[pid][None, :]
        c = cent if o["centroid"] == "majority" else own
        return fac.generating_function(signs, c, o["generating"],
                                       scale=table.scale.to(dev, dt)[pid][None, :],
                                       tolerance=self.tolerance, member=(own - cent).abs() <= h,
                                       bandwidth=h)

    def _sign_softmax(self, signs: Tensor, pid: Tensor, table: ms.SignTable, f_layer: Tensor,
                      bounds: list[int], beta: float) -> Tensor:
        """β · softmax over participants of min(f_S, f_layer) on U (Eq. 11), (n, |U|).

        Literal preset (signed, majority): :func:`fedlib.romoa.sanitizing.signed_softmax`, no
        (n, |U|) gather. Other option combinations materialise g
        (:func:`fedlib.romoa.sanitizing.selected_softmax`).
        """
        if self.options["generating"] == "signed" and self.options["centroid"] == "majority":
            return san.signed_softmax(signs, table.centroid.to(signs.device)[pid], f_layer,
                                      bounds, beta)
        return san.selected_softmax(self._sign_generating(signs, pid, table), f_layer, bounds,
                                    beta)
