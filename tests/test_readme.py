"""Every command in the README's demo-trainers block works as written (CI builds demo/ first, with the
README's first command)."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def demo_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- demo-trainers.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its demo-trainers block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_block_names_every_trainer():
    joined = "\n".join(demo_commands())
    for method in ("mmv", "xdc", "selavi", "eval", "report", "compare", "probe", "map"):
        assert f"trainers {method} " in joined
    for mode in ("--end-to-end-audio", "--end-to-end-video", "--end-to-end-text"):
        assert mode in joined


@pytest.mark.skipif(not (ROOT / "demo" / "features.zarr").is_dir(), reason="run `trainers demo --out demo` first")
def test_readme_demo_commands_run(tmp_path):
    for line in demo_commands():
        cmd = shlex.split(line.replace("demo/runs/", f"{tmp_path}/runs/"))
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
