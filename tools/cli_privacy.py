"""Privacy commands of the ``userlayer`` CLI: ``dp epsilon`` and ``dp noise``.

Both print every accountant side by side (PRV, the default, and RDP over the
wide order grid) for one Poisson-subsampled Gaussian mechanism, so that any
epsilon in a manifest, a ledger or the docs can be recomputed from its raw
mechanism.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console()

Rate = Annotated[float, typer.Option(help="Sampling rate q (Poisson).")]
Steps = Annotated[int, typer.Option(help="Steps (DP-SGD) or rounds (DP-FedAvg).")]
Delta = Annotated[float, typer.Option(help="The delta every epsilon is stated at.")]
Group = Annotated[int, typer.Option(help="Records one unit can change (group privacy).")]


def register(app: typer.Typer) -> None:
    """Add the ``dp`` commands to ``app``."""
    dp_app = typer.Typer(help="Differential-privacy accounting.", no_args_is_help=True)
    app.add_typer(dp_app, name="dp")

    @dp_app.command("epsilon")
    def epsilon_cmd(
        noise: Annotated[float, typer.Option(help="Noise multiplier sigma.")],
        rate: Rate,
        steps: Steps,
        delta: Delta = 1e-5,
        group: Group = 1,
    ) -> None:
        """Epsilon of a mechanism by every accountant."""
        from userlayer.sdk.exceptions import PrivacyError
        from userlayer.sdk.privacy import ACCOUNTANTS, Mechanism, epsilon, library

        try:
            mech = Mechanism(noise, rate, steps)
            rows = [(a, epsilon([mech], delta, a, group)) for a in ACCOUNTANTS]
        except PrivacyError as e:
            raise typer.BadParameter(str(e)) from e
        t = Table(
            title=f"sigma {noise:g}, q {rate:g}, {steps} steps, group {group}, delta {delta:g}"
        )
        t.add_column("accountant")
        t.add_column("epsilon")
        for name, eps in rows:
            t.add_row(f"{name} ({library()})", f"{eps:.4f}")
        console.print(t)

    @dp_app.command("noise")
    def noise_cmd(
        epsilon: Annotated[float, typer.Option(help="Target epsilon.")],
        rate: Rate,
        steps: Steps,
        delta: Delta = 1e-5,
        group: Group = 1,
    ) -> None:
        """The noise multiplier each accountant needs for a target epsilon."""
        from userlayer.sdk.exceptions import PrivacyError
        from userlayer.sdk.privacy import ACCOUNTANTS, noise_multiplier

        try:
            rows = [
                (a, noise_multiplier(epsilon, delta, rate, steps, a, group)) for a in ACCOUNTANTS
            ]
        except PrivacyError as e:
            raise typer.BadParameter(str(e)) from e
        t = Table(title=f"epsilon {epsilon:g}, q {rate:g}, {steps} steps, group {group}")
        t.add_column("accountant")
        t.add_column("noise multiplier")
        for name, sigma in rows:
            t.add_row(name, f"{sigma:.4f}")
        console.print(t)
