"""The update-geometry section of `perl report`: fabricated spectral histories where PiSSA's
update stays in the principal subspace and MiLoRA's in the minor one; any file content."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hst
from suite_fixtures import write_config, write_experiment
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import report_geometry
from perl_cli import state as st
from perl_cli.cli import app
from perl_cli.report_model import Row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHARES = {"pissa": (0.9, 0.01), "milora": (0.02, 0.8), "lora": (0.1, 0.1)}  # (top, bottom) at the end


def geometry_history(method: str, steps: list[int]) -> dict:
    top, bottom = SHARES.get(method, (0.1, 0.1))
    history = []
    for s in steps:
        f = s / steps[-1]
        layer = lambda t, b: {"effective_rank": 1.0, "geometry": {  # noqa: E731
            "k": 4, "rank": 4, "dims": [64, 32],
            "top": {"energy_left": t, "energy_right": t, "cos2_left": t, "cos2_right": t},
            "bottom": {"energy_left": b, "energy_right": b, "cos2_left": b, "cos2_right": b}}}
        history.append({"step": s, "seconds": 0.01, "layers": {
            "layers.0.q_proj": layer(top * f, bottom * f), "layers.1.q_proj": layer(top * f, bottom * f)}})
    return {"method": method, "history": history}


def test_report_plots_and_tabulates_the_geometry(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    for exp in configlib.expand(configlib.load(cfg_path), "core"):
        d = write_experiment(out / "core", exp)
        st.atomic_write_json(d / "spectral_history.json", geometry_history(exp.method, [0, 20, 40, 60, 80, 100]))
    result = CliRunner().invoke(app, ["report", "core", "--config", str(cfg_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "core" / "SUMMARY.md").read_text()
    section = md.split("## Update geometry", 1)[1].split("\n## ", 1)[0]
    # chance for k=4 of dims 64 and 32: (4/64 + 4/32) / 2
    assert "| pissa | 2 | 20 | 0.180 | 0.002 | 100 | 0.900 | 0.010 | 0.094 |" in section, section
    assert "| milora | 2 | 20 | 0.004 | 0.160 | 100 | 0.020 | 0.800 | 0.094 |" in section
    assert (out / "core" / report_geometry.PLOT).read_bytes().startswith(PNG_MAGIC)
    data = json.loads(CliRunner().invoke(app, ["report", "core", "--json", "--config", str(cfg_path), "--output", str(out)]).output)
    assert data["geometry"]["pissa"]["top"][-1] == pytest.approx(0.9)
    assert data["geometry"]["milora"]["steps"] == [0, 20, 40, 60, 80, 100]


def test_a_suite_without_geometry_has_no_section(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "output"
    for exp in configlib.expand(configlib.load(cfg_path), "core"):
        write_experiment(out / "core", exp, tracking=True)  # spectra without geometry (an older worker)
    result = CliRunner().invoke(app, ["report", "core", "--stdout", "--config", str(cfg_path), "--output", str(out)])
    assert result.exit_code == 0 and "Update geometry" not in result.output


json_values = hst.recursive(
    hst.one_of(hst.none(), hst.booleans(), hst.integers(-3, 100), hst.floats(), hst.text(max_size=3)),
    lambda inner: hst.lists(inner, max_size=4) | hst.dictionaries(
        hst.sampled_from(["k", "dims", "top", "bottom", "energy_left", "energy_right", "geometry", "step", "layers", "x"]),
        inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(hst.lists(json_values, max_size=4))
@example([{"step": 1, "layers": {"a": {"geometry": {"k": 4, "dims": [8, 8], "top": {"energy_left": 1e308, "energy_right": 1e308},
                                                   "bottom": {"energy_left": 0.1, "energy_right": 0.1}}}}}] * 3)
def test_any_spectral_history_is_read_without_raising(tmp_path: Path, history) -> None:
    d = tmp_path / "exp"
    d.mkdir(exist_ok=True)
    st.atomic_write_json(d / "spectral_history.json", {"method": "lora", "history": history})
    view = SimpleNamespace(name="lora_s1", method="lora", config={"common": {"seed": 1}}, expected=None,
                           state=st.COMPLETED, dir=d)
    rows = [Row(view, {}, [])]  # type: ignore[arg-type]
    report_geometry.markdown(rows)
    json.dumps(report_geometry.data(rows), allow_nan=False)
