"""The report sections of the placement and ICA studies, recognised from the experiments' settings.

* Placement (`peft.target_modules` × `peft.layers` vary, one variant is all-linear over
  all layers): each variant's held-out accuracy and final reward as % of that baseline,
  its trainable parameters as % of the baseline's, the efficiency figures of eval.json
  beside them, and a verdict on the study's criterion: at least 95% of the baseline's
  held-out accuracy (sampled pass@1) with fewer trainable parameters. Plot: % of the
  baseline's accuracy (and reward) vs % of its parameters.
* ICA (`ica.mode` varies, pairs of experiments identical but for it): per seed, A (mask
  off) and B (mask on) side by side, and B - A as mean ± sd over seeds for held-out
  accuracy, final reward and time (training + mask computation). Plot: reward curves of
  A and B, mean over seeds with a ±std band.

Called by report.py for every suite; a suite that is neither adds nothing. Reads only
config.json / eval.json / metrics.jsonl (through report_model.Row): no torch, no sklearn. A sibling
of the other report sections: it imports the read model and perl_cli/stats.py, never report.py.
"""

from __future__ import annotations

import json
from typing import Any

from perl_cli import stats
from perl_cli.placement import ALL_LAYERS, ALL_LINEAR
from perl_cli.report_model import curve
from perl_cli.state import RUNTIME_KEY
from perl_cli.stats import Stat
from perl_cli.ui import human_seconds

THRESHOLD_PCT = 95.0
PLACEMENT_PLOT = "placement_performance_vs_parameters.png"
ICA_PLOT = "ica_reward_curves.png"


# --- reading the rows -------------------------------------------------------------------


def _peft(row: Any) -> dict:
    peft = row.view.config.get("peft")
    return peft if isinstance(peft, dict) else {}


def placement_of(row: Any) -> tuple[str, str]:
    """(targets, layers) as text: ("all-linear", "all"), ("q_proj,v_proj", "0:14"), ..."""
    peft = _peft(row)
    targets = peft.get("target_modules", ALL_LINEAR)
    layers = peft.get("layers", ALL_LAYERS)
    return (",".join(map(str, targets)) if isinstance(targets, list) else str(targets),
            json.dumps(layers) if isinstance(layers, list) else str(layers))


def ica_mode(row: Any) -> str:
    ica = row.view.config.get("ica")
    return str(ica.get("mode", "off")) if isinstance(ica, dict) else "off"


def _without_ica(row: Any) -> str:
    """The experiment's settings but identity, runtime adjustments and `ica`, as a key."""
    settings = {k: v for k, v in row.view.config.items() if isinstance(v, dict) and k not in ("ica", RUNTIME_KEY)}
    return json.dumps(settings, sort_keys=True, default=str)


def _seed(row: Any) -> Any:
    common = row.view.config.get("common")
    return common.get("seed") if isinstance(common, dict) else None


def _pct(part: float | None, whole: float | None) -> float | None:
    return None if part is None or whole is None or whole <= 0 else 100 * part / whole


# --- placement ---------------------------------------------------------------------------


def is_placement_study(rows: list) -> bool:
    placements = {placement_of(r) for r in rows}
    return len(placements) > 1 and (ALL_LINEAR, ALL_LAYERS) in placements


def placement_results(rows: list) -> list[dict[str, Any]]:
    """One entry per placement variant (baseline first), with its comparison to the baseline."""
    variants: dict[tuple[str, str], list] = {}
    for r in rows:
        variants.setdefault(placement_of(r), []).append(r)
    order = [(ALL_LINEAR, ALL_LAYERS)] + [k for k in variants if k != (ALL_LINEAR, ALL_LAYERS)]  # suite order
    results = [_variant(key, variants[key]) for key in order]
    base = results[0]
    for res in results:
        res["accuracy_pct"] = _pct(res["accuracy"], base["accuracy"])
        res["reward_pct"] = _pct(res["reward"], base["reward"])
        res["params_pct"] = _pct(res["params"], base["params"])
        res["verdict"] = _verdict(res, base)
    return results


def _variant(key: tuple[str, str], members: list) -> dict[str, Any]:
    done = [r for r in members if r.done]
    ev = [r.eval for r in done]
    # ± as everywhere in SUMMARY.md: a standard error (over seeds; one run's over problems).
    accuracy = Stat.over(done, lambda r: r.accuracy, lambda r: r.accuracy_se)
    return {
        "targets": key[0],
        "layers": key[1],
        "runs": len(members),
        "done": len(done),
        "accuracy": accuracy.mean,
        "accuracy_text": accuracy.text(),
        "reward": stats.mean([r.final_reward for r in done]),
        "params": stats.mean([stats.number(e.get("trainable_params")) for e in ev]),
        "memory_mb": stats.mean([stats.number(e.get("peak_memory_mb")) for e in ev]),
        "seconds_per_step": stats.mean([stats.number(e.get("seconds_per_step")) for e in ev]),
        "train_seconds": stats.mean([stats.number(e.get("train_seconds")) for e in ev]),
    }


def _verdict(res: dict[str, Any], base: dict[str, Any]) -> str:
    if res is base:
        return "baseline"
    if res["done"] < res["runs"] or base["done"] < base["runs"]:
        return f"pending ({res['done']}/{res['runs']} runs, baseline {base['done']}/{base['runs']})"
    if res["accuracy_pct"] is None or res["params_pct"] is None:
        return "n/a (baseline accuracy or parameters unknown or zero)"
    kept = res["accuracy_pct"] >= THRESHOLD_PCT
    fewer = res["params_pct"] < 100
    if kept and fewer:
        return f"**meets**: {res['accuracy_pct']:.1f}% of the accuracy with {res['params_pct']:.1f}% of the parameters"
    reasons = []
    if not kept:
        reasons.append(f"{res['accuracy_pct']:.1f}% < {THRESHOLD_PCT:g}% of the accuracy")
    if not fewer:
        reasons.append(f"{res['params_pct']:.1f}% of the parameters, not fewer")
    return "**fails**: " + "; ".join(reasons)


def placement_markdown(rows: list) -> list[str]:
    results = placement_results(rows)
    out = [
        "## Placement: each variant against the all-linear baseline",
        "",
        f"Criterion: at least {THRESHOLD_PCT:g}% of the baseline's held-out accuracy (sampled pass@1, mean over "
        "seeds) with fewer trainable parameters. Final reward is the mean over the last 10% of logged steps. "
        "Efficiency figures are means over the variant's completed runs (eval.json).",
        "",
        "| variant (targets / layers) | runs | accuracy | % of baseline | final reward | % of baseline | "
        "trainable params | % of baseline | verdict | peak memory | s/step | training time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for res in results:
        acc = res["accuracy_text"]
        out.append("| " + " | ".join([
            f"{res['targets']} / {res['layers']}",
            f"{res['done']}/{res['runs']}",
            acc,
            stats.fmt(res["accuracy_pct"], ".1f", "%"),
            stats.fmt(res["reward"], ".3f"),
            stats.fmt(res["reward_pct"], ".1f", "%"),
            f"{int(res['params']):,}" if res["params"] is not None else "-",
            stats.fmt(res["params_pct"], ".1f", "%"),
            res["verdict"],
            stats.fmt(res["memory_mb"], ".0f", " MB"),
            stats.fmt(res["seconds_per_step"], ".2f"),
            human_seconds(res["train_seconds"]) if res["train_seconds"] is not None else "-",
        ]) + " |")
    return out + [""]


def plot_placement(ax: Any, rows: list) -> bool:
    results = [r for r in placement_results(rows) if r["params_pct"] is not None]
    points = [(r, r["accuracy_pct"]) for r in results if r["accuracy_pct"] is not None]
    if not points:
        return False
    for res, acc in points:
        ax.scatter([res["params_pct"]], [acc], color="tab:blue", zorder=3)
        ax.annotate(f"{res['targets']} / {res['layers']}", (res["params_pct"], acc),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
        if res["reward_pct"] is not None:
            ax.scatter([res["params_pct"]], [res["reward_pct"]], marker="x", color="tab:orange", zorder=3)
    ax.scatter([], [], color="tab:blue", label="held-out accuracy")
    ax.scatter([], [], marker="x", color="tab:orange", label="final reward")
    ax.axhline(THRESHOLD_PCT, color="gray", linestyle="--", linewidth=1, label=f"{THRESHOLD_PCT:g}% of baseline")
    ax.axvline(100, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("trainable parameters (% of the all-linear baseline)")
    ax.set_ylabel("performance (% of the all-linear baseline)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return True


# --- ICA -----------------------------------------------------------------------------------


def is_ica_study(rows: list) -> bool:
    return len({ica_mode(r) for r in rows}) > 1 and any(ica_mode(r) == "off" for r in rows)


def _seconds(row: Any) -> float | None:
    train = stats.number(row.eval.get("train_seconds"))
    return None if train is None else train + (stats.number(row.eval.get("ica_seconds")) or 0.0)


def ica_pairs(rows: list) -> list[tuple[Any, Any]]:
    """(A, B) pairs of completed experiments identical but for ica (mask off, mask on)."""
    done = [r for r in rows if r.done]
    offs = {_without_ica(r): r for r in done if ica_mode(r) == "off"}
    return [(offs[key], r) for r in done if ica_mode(r) != "off" and (key := _without_ica(r)) in offs]


def ica_markdown(rows: list) -> list[str]:
    pairs = ica_pairs(rows)
    out = [
        "## ICA mask: A (mask off) vs B (mask on)",
        "",
        "Each pair differs in `ica` only. Time is training plus the mask's computation (eval.json "
        "`train_seconds` + `ica_seconds`); accuracy is held-out sampled pass@1.",
        "",
    ]
    if not pairs:
        return out + ["No completed A/B pair yet.", ""]
    out += [
        "| seed | B mode | neurons masked | accuracy A | accuracy B | B - A | final reward A | final reward B | B - A "
        "| time A | time B (ICA) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    diffs: dict[str, list[float]] = {"accuracy": [], "reward": [], "seconds": []}
    for a, b in sorted(pairs, key=lambda p: (ica_mode(p[1]), stats.number(_seed(p[0])) or 0.0, str(_seed(p[0])))):
        values = {
            "accuracy": (a.accuracy, b.accuracy),
            "reward": (a.final_reward, b.final_reward),
            "seconds": (_seconds(a), _seconds(b)),
        }
        for key, (va, vb) in values.items():
            if va is not None and vb is not None:
                diffs[key].append(vb - va)
        pct = stats.number(b.eval.get("ica_selected_pct"))
        ica_s = stats.number(b.eval.get("ica_seconds"))
        out.append("| " + " | ".join([
            str(_seed(a)),
            ica_mode(b),
            (f"{int(b.eval['ica_selected_neurons']):,} ({pct:.1f}%)" if pct is not None and stats.number(b.eval.get("ica_selected_neurons")) is not None else "-"),
            stats.fmt(a.accuracy, ".3f"), stats.fmt(b.accuracy, ".3f"), _diff(*values["accuracy"]),
            stats.fmt(a.final_reward, ".3f"), stats.fmt(b.final_reward, ".3f"), _diff(*values["reward"]),
            _time(values["seconds"][0]),
            _time(values["seconds"][1]) + (f" ({human_seconds(ica_s)})" if ica_s is not None else ""),
        ]) + " |")
    out += [
        "",
        f"B - A over {len(pairs)} pair(s), mean ± sd over seeds (the spread of the differences, not a standard error): "
        f"held-out accuracy {stats.spread(diffs['accuracy'], '.3f')}, "
        f"final reward {stats.spread(diffs['reward'], '.3f')}, "
        f"time {stats.spread(diffs['seconds'], '.1f')} s.",
        "",
    ]
    return out


def _diff(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b - a:+.3f}"


def _time(seconds: float | None) -> str:
    return human_seconds(seconds) if seconds is not None else "-"


def plot_ica(ax: Any, rows: list) -> bool:
    """Reward curves of A and B over the runs of the A/B table (completed pairs), at the steps
    every one of them logged, like the report's other curves (report_model.curve)."""
    drawn = False
    groups: dict[str, list] = {}
    for a, b in ica_pairs(rows):
        groups.setdefault("off", []).append(a)
        groups.setdefault(ica_mode(b), []).append(b)
    for mode in sorted(groups, key=lambda m: (m != "off", m)):
        members = groups[mode]
        steps, mean, std = curve(members, "reward")
        if not steps:
            continue
        n = len(members)
        label = ("A: mask off" if mode == "off" else f"B: mask {mode}") + f" ({n} run{'s' if n != 1 else ''})"
        (line,) = ax.plot(steps, mean, label=label, linewidth=1.5)
        ax.fill_between(steps, [m - d for m, d in zip(mean, std, strict=True)],
                        [m + d for m, d in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.legend(fontsize=8, title="each point averages", title_fontsize=8)
        ax.grid(alpha=0.3)
    return drawn


# --- what report.py calls --------------------------------------------------------------------


def markdown(rows: list) -> list[str]:
    """The study sections this suite's experiments call for (none for other suites)."""
    out: list[str] = []
    if is_placement_study(rows):
        out += placement_markdown(rows)
    if is_ica_study(rows):
        out += ica_markdown(rows)
    return out


def plots(rows: list) -> list[tuple[str, str, Any]]:
    """(title, file name, draw(ax, rows)) of the study plots this suite calls for."""
    out = []
    if is_placement_study(rows):
        out.append(("Placement: % of baseline performance vs % of its parameters", PLACEMENT_PLOT, plot_placement))
    if is_ica_study(rows):
        out.append(("ICA: reward, A (mask off) vs B (mask on), mean over seeds, band ± std", ICA_PLOT, plot_ica))
    return out
