"""``resnetkit models``: list the zoo."""

from __future__ import annotations

from typing import Any

import typer

from ..core.errors import ResnetkitError
from ..core.measure import count_params
from ..core.zoo import get_spec, list_models
from .app import JsonFlag, app, console, default, print_json, styled


def _describe(name: str) -> dict[str, Any]:
    spec = get_spec(name)
    module = spec.build()
    return {
        "name": name,
        "family": spec.family,
        "params_m": round(count_params(module) / 1e6, 3),
        "input_size": spec.default_weights.preprocessing.crop_size,
        "num_classes": len(spec.default_weights.categories),
        "weights": [
            {
                "tag": w.tag,
                "url": w.url,
                "sha256": w.sha256,
                "hash_prefix": w.hash_prefix,
                "preprocessing": w.preprocessing.describe(),
                "top1": w.metrics.top1,
                "top5": w.metrics.top5,
                "published_gmacs": w.metrics.gmacs,
                "metrics_source": w.metrics.source,
                "license": w.license,
            }
            for w in spec.weights
        ],
    }


@app.command("models")
def models_command(
    include: str = typer.Option(None, "--include", help=default("Only names matching this pattern (e.g. 'resnet*').", "all models")),
    json_output: JsonFlag = False,
) -> None:
    """List the model zoo: family, params, input size, preprocessing, published accuracy, weights."""
    names = list_models(include)
    if not names:
        raise _no_match(include)
    rows = [_describe(name) for name in names]
    if json_output:
        print_json(rows)
        return
    for row in rows:
        console.print(styled((row["name"], "bold"), f"  {row['family']}, {row['params_m']:.2f} M params (counted), "
                             f"input {row['input_size']}x{row['input_size']}, {row['num_classes']} classes"),
                      highlight=False)
        for i, w in enumerate(row["weights"]):
            mark = " (default)" if i == 0 else ""
            console.print(styled(f"  {w['tag']}{mark}: top-1 {_fmt(w['top1'])}, top-5 {_fmt(w['top5'])} ",
                                 (f"(published: {w['metrics_source']})", "dim")), highlight=False)
            console.print(f"    preprocessing: {w['preprocessing']}", highlight=False)
            digest = w["sha256"] or f"{w['hash_prefix']} (prefix; full hash not published)"
            console.print(f"    url: {w['url']}\n    sha256: {digest}", highlight=False, soft_wrap=True)


def _no_match(pattern: str) -> ResnetkitError:
    """No zoo name matches ``pattern``: say so, with the pattern that finds it inside names when that matches."""
    wider = f"*{pattern}*"
    hint = f" Did you mean '{wider}'?" if list_models(wider) else ""
    return ResnetkitError(f"No model name matches '{pattern}' (shell-style patterns match whole names, e.g. "
                          f"'resnet*').{hint} Run 'resnetkit models' to list every name.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"
