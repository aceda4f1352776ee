"""The paper's comparison at CPU scale: `semionline sweep` as a script (engine/sweep.py).

    .venv/bin/python launch/sweep.py --config configs/paper_cpu.yaml            # full, resumable
    .venv/bin/python launch/sweep.py --config configs/paper_cpu.yaml --quick    # CI smoke run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run as a script

from engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
