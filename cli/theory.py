"""``rsc theory``: plot (or print) the linear model's closed-form predictions of PROTOCOL.md
section 6 for the study's two curve families.

Output design:
- without ``--json``: write the PNG (``-o``, default ``theory.png``) and print its path;
- with ``--json``: print the numbers as JSON on stdout and write NO PNG, unless ``-o`` is also
  given explicitly, in which case the PNG is written too (its path goes to stderr so stdout stays
  pure JSON).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from rsc_core.errors import ConfigError
from rsc_core.analysis.theory import (STUDY_G_MAX, STUDY_NOISES, STUDY_POINTS, STUDY_RIDGES,
    StudyCurves, TheoryParams, study_curves)

from .output import echo_json

_METRICS = (
    ("spurious_score", "spurious score"),
    ("clean_accuracy", "clean test accuracy"),
    ("spurious_accuracy", "spurious test accuracy"),
)
_ROWS = (
    ("ridge", "varying ridge L (v = 0)"),
    ("noise", "varying input-noise variance v (L = 0)"),
)


def plot_study(curves: StudyCurves, output: Path) -> Path:
    """Draw the curve families as a grid (rows: families, columns: metrics) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsc_core.storage.atomic import write_file
    from rsc_core.plots import fit_title

    rows = [(key, title) for key, title in _ROWS if curves.families.get(key)]
    fig, axes = plt.subplots(len(rows), len(_METRICS), figsize=(4.4 * len(_METRICS),
                             3.6 * len(rows)), squeeze=False, constrained_layout=True)
    try:
        for r, (key, row_title) in enumerate(rows):
            for c, (metric, metric_title) in enumerate(_METRICS):
                ax = axes[r][c]
                for curve in curves.families[key]:
                    ax.plot(curves.g, getattr(curve, metric), label=curve.label)
                ax.set_title(f"{metric_title}\n{row_title}", fontsize=10)
                ax.set_xlabel("g (fraction of training data with the spurious feature)")
                ax.set_ylabel(metric_title)
                ax.set_xlim(curves.g[0], curves.g[-1])
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=8)
        p = curves.params
        fig.suptitle(fit_title(f"Linear-model theory: x_inv = {p['x_inv']:g}, x_sp^2 = "
                               f"{p['x_sp2']:g}, base s_inv = {p['s_inv']:g}, s_sp = "
                               f"{p['s_sp']:g} (+ v with noise)", fig.get_figwidth()))
        # Atomically: a full disk leaves no half-written PNG behind.
        write_file(output, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return output


def _check_output(output: str) -> Path:
    """Reject a bad ``-o`` before any work: a non-PNG name, a folder, a missing folder, a
    file where the folder should be, or a folder this user may not write."""
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--output must name a .png file, got {output!r}")
    if path.is_dir():
        raise ConfigError(f"--output {output!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--output {output!r}: {str(parent)!r} is a file, not a directory; "
                          f"choose another path")
    if not parent.is_dir():
        component = next((p for p in parent.parents if p.exists() and not p.is_dir()), None)
        if component is not None:
            raise ConfigError(f"--output {output!r}: {str(component)!r} is a file, not a "
                              f"directory; choose another path")
        raise ConfigError(f"--output directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output directory {str(parent)!r} is not writable; choose "
                          f"another path")
    return path


@click.command("theory")
@click.option("--ridge", "ridges", type=float, multiple=True, metavar="L",
              help="Ridge (L2) parameter L of one curve in the ridge family (drawn at noise "
                   "variance 0). Repeat for several curves. Must be >= 0. "
                   "Default: the study's 0 1 10 100.")
@click.option("--noise", "noises", type=float, multiple=True, metavar="V",
              help="Input-noise VARIANCE v of one curve in the noise family (drawn at ridge 0); "
                   "v is added to both feature variances (s_inv + v, s_sp + v). Repeat for "
                   "several curves. Must be >= 0. Default: the study's 0 0.1 0.2 0.3.")
@click.option("--g-max", type=float, default=STUDY_G_MAX, show_default=True,
              help="Largest spurious fraction g on the x axis; the grid is [0, G_MAX], "
                   "0 < G_MAX <= 1.")
@click.option("--points", type=int, default=STUDY_POINTS, show_default=True,
              help="Number of evenly spaced g values on the grid (>= 2).")
@click.option("--x-sp2", type=float, default=TheoryParams.x_sp2, show_default=True,
              help="Squared magnitude x_sp^2 of the spurious feature (>= 0).")
@click.option("--x-inv", type=float, default=TheoryParams.x_inv, show_default=True,
              help="Mean magnitude x_inv of the invariant feature (> 0).")
@click.option("--s-inv", type=float, default=TheoryParams.s_inv, show_default=True,
              help="Noise-free variance of the invariant feature; the model uses s_inv + v.")
@click.option("--s-sp", type=float, default=TheoryParams.s_sp, show_default=True,
              help="Noise-free variance of the spurious feature; the model uses s_sp + v.")
@click.option("-o", "--output", default="theory.png", show_default=True, metavar="PNG",
              help="Where to write the figure (a .png path in an existing directory). With "
                   "--json the figure is written only if -o is given explicitly.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the curves as JSON on stdout (keys: params, g, families.ridge, "
                   "families.noise; each curve has label, ridge, noise_var, spurious_score, "
                   "clean_accuracy, spurious_accuracy). Skips the PNG unless -o is given.")
@click.pass_context
def theory(ctx: click.Context, ridges: tuple[float, ...], noises: tuple[float, ...],
           g_max: float, points: int, x_sp2: float, x_inv: float, s_inv: float, s_sp: float,
           output: str, as_json: bool) -> None:
    """Closed-form predictions of the linear model (PROTOCOL.md section 6).

    Computes the spurious score, clean test accuracy and spurious test accuracy against the
    spurious fraction g for two families: ridge L in {0, 1, 10, 100} at v = 0, and input-noise
    variance v in {0, 0.1, 0.2, 0.3} at L = 0. Draws a 2 x 3 grid of panels (rows: family,
    columns: quantity) into a PNG, or prints the numbers with --json.

    \b
    Examples:
      rsc theory                          # writes theory.png
      rsc theory --ridge 0 --ridge 5 -o ridge.png
      rsc theory --json --points 6 > theory.json
    """
    explicit_output = (ctx.get_parameter_source("output")
                       is not click.core.ParameterSource.DEFAULT)
    write_png = explicit_output or not as_json
    path = _check_output(output) if write_png else None
    params = TheoryParams(x_inv=x_inv, x_sp2=x_sp2, s_inv=s_inv, s_sp=s_sp)
    try:
        curves = study_curves(ridges=ridges or STUDY_RIDGES, noises=noises or STUDY_NOISES,
                              g_max=g_max, points=points, params=params)
    except OverflowError:
        raise ConfigError("these parameters overflow double precision; use smaller "
                          "--x-inv, --x-sp2, --s-inv, --s-sp, --ridge or --noise") from None
    if as_json:
        echo_json(curves.to_dict())
    if path is not None:
        plot_study(curves, path)
        click.echo(f"wrote {path}", err=as_json)


COMMANDS = [theory]
