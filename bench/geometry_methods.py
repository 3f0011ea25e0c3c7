"""Update geometry of LoRA, PiSSA and MiLoRA in short real GRPO runs (issue 17).

Trains each method a few steps on builtin:tiny-random with a reward the random model earns
(the tests' shaped reward), spectral tracking on, and prints, per method, the share of the
update's energy in the base weight's top-k and bottom-k singular subspaces at the first and
last snapshot (mean over layers), beside chance. PiSSA's update should sit in the principal
subspace, MiLoRA's in the minor one, LoRA's near chance.

    python bench/geometry_methods.py [--steps 10] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--methods", default="lora,pissa,milora")
    args = parser.parse_args()
    from training_support import make_config, shaped_reward_functions, write_experiment

    from perl_cli import rewards
    from perl_cli.state import read_json
    from perl_cli.tracking.callback import SPECTRAL_FILE
    from perl_cli.train import run_experiment

    rewards.reward_functions = shaped_reward_functions
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            config = make_config(
                f"geo_{method}", peft__type=method, training__max_steps=args.steps, training__learning_rate=args.lr,
                tracker__enable_spectral_tracking=True, tracker__spectral_log_frequency=max(1, args.steps // 2),
                eval__enabled=False,
            )
            exp = write_experiment(Path(tmp), config)
            assert run_experiment(exp) == 0, method
            data = read_json(exp / SPECTRAL_FILE)
            print(f"{method}: base subspaces computed once in {data.get('base_subspaces_seconds', 0):.2f} s; "
                  f"snapshot seconds {[round(h['seconds'], 3) for h in data['history']]}")
            for snap in data["history"]:
                geos = [layer["geometry"] for layer in snap["layers"].values() if layer.get("geometry", {}).get("top")]
                if not geos:
                    print(f"  step {snap['step']:>3}: no update yet")
                    continue
                mean = lambda side, key, geos=geos: statistics.fmean(g[side][key] for g in geos)  # noqa: E731
                chance = statistics.fmean((g["k"] / g["dims"][0] + g["k"] / g["dims"][1]) / 2 for g in geos)
                print(f"  step {snap['step']:>3}: energy in top-k left/right {mean('top', 'energy_left'):.3f}/"
                      f"{mean('top', 'energy_right'):.3f}, bottom-k {mean('bottom', 'energy_left'):.3f}/"
                      f"{mean('bottom', 'energy_right'):.3f}; cos² top {mean('top', 'cos2_right'):.3f}, bottom "
                      f"{mean('bottom', 'cos2_right'):.3f}; chance {chance:.3f} ({len(geos)} layers, k={geos[0]['k']})",
                      flush=True)


if __name__ == "__main__":
    main()
