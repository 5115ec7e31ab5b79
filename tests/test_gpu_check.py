"""benchmarks/gpu_check.py --tiny: the one-command GPU check runs end to end on the CPU with the tiny model.

Every part of the check (naive and batched ``generate`` against the engine, memory, the vision tower's
options including compilation, a LoRA step at the recipe's settings, ``realqa score`` in two torchrun
ranks sharing one device against one process) runs, so the GPU run is not its first.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_with_the_tiny_model():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny"], capture_output=True,
                          text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    parts = {line.split("|")[1].strip() for line in table}
    assert parts == {"e2e", "memory", "vision", "train", "torchrun"}, done.stdout
    rows = {(line.split("|")[1].strip(), line.split("|")[3].strip()): line for line in table}
    engine = [line for (part, what), line in rows.items() if part == "e2e" and what.startswith("engine")]
    assert engine and all("4/4 answers = batched generate" in line for line in engine), engine
    assert "equal: 8/8 rows" in rows[("torchrun", "realqa score: torchrun 2 ranks on one device vs one process")]
    vision = [line for (part, _), line in rows.items() if part == "vision" and "max |diff|" in line]
    assert len(vision) == 4 and any("compiled" in line for line in vision)
    assert "loss" in next(line for (part, _), line in rows.items() if part == "train")
