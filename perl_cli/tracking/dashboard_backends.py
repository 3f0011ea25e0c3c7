"""The two dashboards a worker can log to: Weights & Biases and trackio, behind one interface.

Each backend opens (or resumes) the experiment's run, logs one row of metrics per training
step, makes images and histograms in its own types, keeps a run summary, and says which
step the run's record already holds, so a resumed attempt never logs a step twice.
The libraries are imported only when a backend starts.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from perl_cli.tracking import wandb_records

TRACKIO_DIR_NAME = "trackio"  # in the suite directory, unless TRACKIO_DIR says otherwise


class Backend:
    """What the dashboard callback needs from a tracking library."""

    name = ""

    def start(self, identity: Any) -> int | None:
        """Open or resume the run; the highest step its record already holds (None: none)."""
        raise NotImplementedError

    def log(self, metrics: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def image(self, png: bytes, caption: str) -> Any:
        raise NotImplementedError

    def histogram(self, values: list[float]) -> Any:
        raise NotImplementedError

    def summarize(self, values: dict[str, Any], step: int | None) -> None:
        """Final results: a run summary where the library has one."""
        raise NotImplementedError

    def finish(self, exit_code: int = 0) -> dict[str, Any]:
        """Close the run; what eval.json should record about it."""
        raise NotImplementedError


def _pil(png: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def wandb_mode(section: dict[str, Any]) -> str:
    """offline, online or disabled.

    Offline when the config says so, when WANDB_MODE=offline, or when no WANDB_API_KEY is
    set (a worker on a compute node must never stop at a login prompt); WANDB_MODE=online
    forces online (e.g. with credentials from `wandb login`); WANDB_MODE=disabled logs nothing.
    """
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "disabled":
        return "disabled"
    if section.get("offline") or env in ("offline", "dryrun"):
        return "offline"
    if env == "online" or os.environ.get("WANDB_API_KEY"):
        return "online"
    return "offline"


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, exp_dir: Path, section: dict[str, Any]) -> None:
        self.exp_dir = exp_dir
        self.section = section
        self.mode = wandb_mode(section)
        self.run: Any = None
        self.wandb: Any = None

    def start(self, identity: Any) -> int | None:
        # Read before init: the new attempt's own (empty) record must not count.
        recorded = wandb_records.last_step(self.exp_dir / "wandb", identity.run_id)
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=identity.project,
            entity=self.section.get("entity") or None,
            name=identity.name,
            id=identity.run_id,
            resume="allow",  # a resumed experiment continues the same run
            group=identity.group,
            tags=identity.tags,
            config=identity.config,
            dir=str(self.exp_dir),
            mode=self.mode,
            reinit="finish_previous",
        )
        # Online, the server knows the resumed run's steps: run.step is the next one.
        if getattr(self.run, "resumed", False) and self.run.step > 0:
            server = int(self.run.step) - 1
            recorded = server if recorded is None else max(recorded, server)
        return recorded

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def image(self, png: bytes, caption: str) -> Any:
        return self.wandb.Image(_pil(png), caption=caption)

    def histogram(self, values: list[float]) -> Any:
        return self.wandb.Histogram(values, num_bins=min(32, max(1, len(values))))

    def summarize(self, values: dict[str, Any], step: int | None) -> None:
        self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> dict[str, Any]:
        info = {"wandb_dir": str(Path(self.run.dir).parent)}
        if self.mode == "online":
            info["wandb_url"] = self.run.url
        self.run.finish(exit_code=exit_code)
        return info


class TrackioBackend(Backend):
    """trackio: local-first, its database in the suite directory (or TRACKIO_DIR).

    trackio has no tags and no run summary: tags go into the run's config, and the final
    results are logged with the last step's row."""

    name = "trackio"

    def __init__(self, exp_dir: Path, section: dict[str, Any]) -> None:
        self.exp_dir = exp_dir
        self.section = section
        self.trackio: Any = None
        self.run: Any = None
        self.directory = trackio_dir(exp_dir)

    def start(self, identity: Any) -> int | None:
        prepare_environment(self.exp_dir, {"wandb": self.section})
        import trackio
        import trackio.utils

        self.trackio = trackio
        actual = Path(trackio.utils.TRACKIO_DIR)
        if actual.resolve() != self.directory.resolve():
            # Imported before TRACKIO_DIR was set (TRL imports it): it writes where it was told then.
            print(f"[perl] trackio: logging to {actual}, not {self.directory} (trackio was imported before "
                  "TRACKIO_DIR was set)", flush=True)
            self.directory = actual
        print(f"[perl] trackio: dashboard with TRACKIO_DIR={self.directory} trackio show --project "
              f"{identity.project}", flush=True)
        self.project = identity.project
        self.run_name = identity.run_id  # resume finds a run by its name: it must be unique
        recorded = trackio_last_step(self.directory, self.project, self.run_name)
        self.run = trackio.init(
            project=identity.project,
            name=self.run_name,
            group=identity.group,
            config={**identity.config, "tags": identity.tags, "experiment": identity.name},
            resume="allow",
            auto_log_cpu=False,  # memory is logged per step by the dashboard callback
            auto_log_gpu=False,
            embed=False,
        )
        return recorded

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def image(self, png: bytes, caption: str) -> Any:
        return self.trackio.Image(_pil(png), caption=caption)

    def histogram(self, values: list[float]) -> Any:
        return self.trackio.Histogram(values, num_bins=min(32, max(1, len(values))))

    def summarize(self, values: dict[str, Any], step: int | None) -> None:
        pass  # the dashboard callback puts them in the last row instead

    def finish(self, exit_code: int = 0) -> dict[str, Any]:
        self.trackio.finish()  # flushes the queued rows into the database
        return {"trackio_dir": str(self.directory), "trackio_project": self.project, "trackio_run": self.run_name}


def trackio_dir(exp_dir: Path) -> Path:
    """trackio's directory for an experiment: TRACKIO_DIR when set, else `trackio/` in the suite directory."""
    return Path(os.environ.get("TRACKIO_DIR") or Path(exp_dir).parent / TRACKIO_DIR_NAME)


def prepare_environment(exp_dir: Path, config: Any) -> None:
    """Set TRACKIO_DIR for a trackio experiment. Must run before TRL is imported: TRL imports
    trackio, and trackio reads TRACKIO_DIR once, when it is imported (the worker calls this first)."""
    section = config.get("wandb") if isinstance(config, dict) else None
    if isinstance(section, dict) and section.get("use_wandb") and section.get("backend") == "trackio":
        os.environ["TRACKIO_DIR"] = str(trackio_dir(exp_dir))


def trackio_db(directory: Path, project: str) -> Path:
    return Path(directory) / f"{project}.db"


def trackio_rows(directory: Path, project: str, run_name: str) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of every row trackio stored for the run, in order (read-only, no trackio)."""
    import json
    import sqlite3

    path = trackio_db(directory, project)
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (run_name,)
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()
    return [(int(step), json.loads(text)) for step, text in rows]


def trackio_config(directory: Path, project: str, run_name: str) -> dict[str, Any]:
    import json
    import sqlite3

    path = trackio_db(directory, project)
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT config FROM configs WHERE run_name = ?", (run_name,)).fetchone()
    except sqlite3.Error:
        return {}
    finally:
        con.close()
    return json.loads(row[0]) if row else {}


def trackio_last_step(directory: Path, project: str, run_name: str) -> int | None:
    steps = [step for step, _ in trackio_rows(directory, project, run_name)]
    return max(steps) if steps else None


def make(exp_dir: Path, section: dict[str, Any]) -> Backend | None:
    """The backend the config's wandb section asks for (None: W&B disabled by WANDB_MODE)."""
    if section.get("backend", "wandb") == "trackio":
        return TrackioBackend(exp_dir, section)
    if wandb_mode(section) == "disabled":
        return None
    return WandbBackend(exp_dir, section)
