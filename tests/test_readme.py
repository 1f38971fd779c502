"""Every command in the README's demo-trainers block works as written (CI builds demo/ first, with the
README's first command), run on a temporary copy of demo/: the user's demo store is never written. And every
`pipeline` / `trainers` command in the README and docs/ names a subcommand and flags that exist."""
import contextlib
import io
import re
import shlex
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


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, line, argv) of each `pipeline ...` or `trainers ...` line in the shell blocks of the README and
    docs/*.md: continuation lines joined, a trailing ``# comment`` dropped, ``[--optional flags]`` unbracketed."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.match(r"\s*(?:\.venv/bin/)?(pipeline|trainers)\s+(.*)$", line)
                if m:
                    argv = [a.strip("[]") for a in shlex.split(re.sub(r"\s#\s.*$", "", m.group(2)))]
                    found.append((path.name, line.strip(), [m.group(1), *argv]))
    return found


def test_every_documented_command_parses():
    from pipeline.cli import build_parser as pipeline_parser
    from trainers.cli import build_parser as trainers_parser

    commands = documented_commands()
    assert len(commands) > 40 and {c[0] for c in commands} >= {"README.md", "extraction.md", "training.md"}
    wrong = []
    for name, line, (tool, *argv) in commands:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                (pipeline_parser if tool == "pipeline" else trainers_parser)().parse_args(argv)
        except SystemExit as e:
            if e.code:
                wrong.append(f"{name}: {line}\n  {err.getvalue().strip().splitlines()[-1]}")
    assert not wrong, "documented commands the CLI refuses:\n" + "\n".join(wrong)


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
