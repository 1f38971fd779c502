"""Every command in the README's demo-trainers block works as written (CI builds demo/ first, with the
README's first command), run on a temporary copy of demo/: the user's demo store is never written."""
import re
import shutil
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


def demo_files() -> set:
    """Every file of the checkout's demo/ with its size and modification time."""
    return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (ROOT / "demo").rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "demo" / "features.zarr").is_dir(), reason="run `trainers demo --out demo` first")
@pytest.mark.skipif(not (ROOT / ".venv" / "bin").is_dir(), reason="the README's commands run from .venv/bin")
def test_readme_demo_commands_run(tmp_path):
    """In a folder holding a copy of demo/ (without its runs) and a link to the checkout's .venv, the block as
    written, in bash (each command echoed, the first failure ends it)."""
    shutil.copytree(ROOT / "demo", tmp_path / "demo", ignore=lambda d, names: ["runs"] if d == str(ROOT / "demo") else [])
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    before = demo_files()
    done = subprocess.run(["bash", "-e", "-x", "-c", "\n".join(demo_commands())], cwd=tmp_path, capture_output=True,
                          text=True, timeout=3000)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert demo_files() == before
