"""Privacy accounting, shared by the edge (per-user ledgers) and the cloud (the shared part).

Every DP mechanism here is the Poisson-subsampled Gaussian mechanism run
``steps`` times (:class:`Mechanism`): DP-SGD steps on a user's examples on the
edge, DP-FedAvg rounds over users in the cloud. Its guarantee is for the
add/remove of one *record* (an example, or a user's update).

Accountants (Opacus, the version the extras pin; :func:`library` names it):

- ``"prv"`` (default): numerical composition of privacy loss random variables
  (Gopi, Lee and Wutschitz 2021). It reports the upper end of its error
  interval (``eps_error`` 0.01), so the value is a guarantee, not an estimate.
  Its discretisation does not work for tiny noise (a noise multiplier of 0.05
  runs for minutes and asks for petabytes) nor for tiny deltas (below about
  1e-12, which group privacy can ask for), so a composition that holds a
  mechanism with noise below :data:`PRV_MIN_NOISE`, or that PRV refuses, is
  bounded by RDP instead (looser, equally valid).
- ``"rdp"``: Renyi DP (Mironov 2017) over :data:`RDP_ORDERS`, Opacus' orders
  extended to 4096 so that the best order lies inside the grid (Opacus'
  default grid stops at 63 and warns "optimal order is the largest alpha"
  whenever the noise is large relative to the sampling rate).

Groups. When one unit of privacy (an event of a user) can change up to ``k``
records (each added or removed record counts one, a modified record two:
remove then add), the unit's guarantee follows from group privacy of
(epsilon, delta)-DP: an (e, d)-DP mechanism is (k e, k exp((k - 1) e) d)-DP
for datasets ``k`` records apart (Vadhan 2017, Lemma 2.2). :func:`epsilon`
with ``group=k`` picks the record-level delta that makes the unit-level delta
the one asked for and returns ``k e``, bounded by RDP (the record-level deltas
it needs are below PRV's numerical range); with ``k = 1`` it is the
accountant's own value.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from userlayer.sdk.exceptions import PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "PRV_MIN_NOISE",
    "RDP_ORDERS",
    "Mechanism",
    "epsilon",
    "library",
    "noise_multiplier",
]

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp")
DEFAULT_ACCOUNTANT = "prv"
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *(64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096),
)
PRV_EPS_ERROR = 0.01
PRV_MIN_NOISE = 0.3
_MAX_SIGMA = 1e6


@dataclass(frozen=True)
class Mechanism:
    """A Poisson-subsampled Gaussian mechanism run ``steps`` times; validated on creation."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(
                f"`noise_multiplier` should be positive and finite, got {self.noise_multiplier}"
            )
        if not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"`sample_rate` should be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise PrivacyError(f"`steps` should be a positive integer, got {self.steps!r}")

    def as_tuple(self) -> tuple[float, float, int]:
        """``(noise_multiplier, sample_rate, steps)``, Opacus' history entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def library() -> str:
    """The accountant's library and version, recorded with every epsilon."""
    try:
        return f"opacus {version('opacus')}"
    except PackageNotFoundError:  # pragma: no cover - the extras always install it
        return "opacus (not installed)"


def _accountant_class(name: str) -> Any:
    """Import Opacus' accountant without keeping the root log handler it installs."""
    if name not in ACCOUNTANTS:
        raise PrivacyError(f"`accountant` should be one of {ACCOUNTANTS}, got {name!r}")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        from opacus.accountants import PRVAccountant, RDPAccountant
    except ImportError as e:  # pragma: no cover - the extras always install it
        raise PrivacyError("privacy accounting needs opacus (the [edge] or [cloud] extra)") from e
    finally:
        root.handlers[:] = handlers
    return PRVAccountant if name == "prv" else RDPAccountant


def _record_epsilon(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    if accountant == "prv" and min(h[0] for h in history) >= PRV_MIN_NOISE:
        try:
            return _prv_epsilon(history, delta)
        except (ValueError, RuntimeError, FloatingPointError, MemoryError) as e:  # out of range
            logger.debug("PRV accountant failed (%s): bounded by RDP instead", e)
    return _rdp_epsilon(history, delta)


def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    acc = _accountant_class("prv")()
    acc.history = list(history)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        eps = acc.get_epsilon(delta, eps_error=PRV_EPS_ERROR)
    for w in caught:
        logger.debug("PRV accountant: %s", w.message)
    return float(eps)


@lru_cache(maxsize=4096)
def _rdp_curve(history: tuple[tuple[float, float, int], ...]) -> tuple[float, ...]:
    """The composed RDP at every order of :data:`RDP_ORDERS` (what RDPAccountant sums)."""
    _accountant_class("rdp")
    from opacus.accountants.analysis.rdp import compute_rdp

    with np.errstate(all="ignore"):
        rdp = sum(
            compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
            for sigma, q, steps in history
        )
    return tuple(float(x) for x in np.atleast_1d(rdp))


def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' RDP conversion at ``delta`` of the (cached) composed curve."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    curve = np.array(_rdp_curve(history))
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=curve, delta=delta)
    for w in caught:
        logger.debug("RDP accountant: %s", w.message)
    return float(eps)


@lru_cache(maxsize=4096)
def _epsilon_cached(
    history: tuple[tuple[float, float, int], ...],
    delta: float,
    accountant: str,
    group: int,
) -> float:
    if group == 1:
        return _record_epsilon(history, delta, accountant)
    # group privacy asks for record-level deltas far below PRV's numerical range (about
    # 1e-12 and smaller): the conversion is bounded by RDP, whose curve is computed once
    accountant = "rdp"
    # the record-level delta d with k exp((k - 1) e(d)) d <= delta: a fixed-point iteration
    # d <- delta / (k exp((k - 1) (e(d) + margin))); it stops once e(d) is within the margin
    margin = 1e-3
    e = _record_epsilon(history, delta / group, accountant)
    for _ in range(50):
        log_d = math.log(delta / group) - (group - 1) * (e + margin)
        if log_d < -700:  # no record-level delta is small enough: no guarantee at this delta
            return math.inf
        e_d = _record_epsilon(history, math.exp(log_d), accountant)
        if e_d <= e + margin:
            return group * (e + margin)
        e = e_d
    raise PrivacyError(f"group privacy conversion did not converge (group {group})")


def epsilon(
    mechanisms: Sequence[Mechanism],
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    group: int = 1,
) -> float:
    """Epsilon at ``delta`` of composing ``mechanisms``, for a unit touching ``group`` records.

    Raises:
        PrivacyError: on a bad delta, group or accountant name.
    """
    if not 0 < delta < 1:
        raise PrivacyError(f"`delta` should be in (0, 1), got {delta}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise PrivacyError(f"`group` should be a positive integer, got {group!r}")
    _accountant_class(accountant)
    if not mechanisms:
        return 0.0
    history = tuple(m.as_tuple() for m in mechanisms)
    return _epsilon_cached(history, float(delta), accountant, group)


def noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
    group: int = 1,
    tolerance: float = 0.005,
) -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend ``target_epsilon``.

    The answer's epsilon (by the same accountant) is at most the target and
    within ``tolerance`` (relative) of it. The root is found by regula falsi
    (Illinois) on log epsilon against log sigma, which is nearly linear, so a
    handful of accountant calls suffice.

    Raises:
        PrivacyError: if the target cannot be reached with any noise.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"`target_epsilon` should be positive, got {target_epsilon}")
    epsilon([Mechanism(1.0, sample_rate, steps)], delta, accountant, group)  # validates

    def f(log_sigma: float) -> float:  # > 0 while sigma is too small
        hist = (Mechanism(math.exp(log_sigma), sample_rate, steps).as_tuple(),)
        e = _epsilon_cached(hist, float(delta), accountant, group)
        return min(50.0, math.log(max(e, 1e-300)) - math.log(target_epsilon))

    a, fa = 0.0, f(0.0)
    b, fb = a, fa
    step = 1.0 if fa > 0 else -1.0
    while (fb > 0) == (fa > 0):  # bracket the root
        a, fa = b, fb
        b += step
        if b > math.log(_MAX_SIGMA):
            raise PrivacyError(f"epsilon {target_epsilon} cannot be reached at delta {delta}")
        fb = f(b)
    lo, flo, hi, fhi = (a, fa, b, fb) if fa > 0 else (b, fb, a, fa)  # f(lo) > 0 >= f(hi)
    side = 0
    for _ in range(60):
        if -math.log1p(-tolerance) >= -fhi:  # epsilon(hi) within tolerance below the target
            break
        x = hi - fhi * (hi - lo) / (fhi - flo)
        fx = f(x)
        if fx > 0:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
    return math.exp(hi)
