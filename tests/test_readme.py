"""Every code block of README.md runs as printed.

- ```python blocks: all of them run, each in a fresh interpreter of the repository's venv.
- ```bash blocks: each is preceded by a marker line, `<!-- test: run -->` or `<!-- test: skip (reason) -->`;
  a block without one fails here, so a new block has to say which it is. The skipped ones are exactly
  SKIPPED below: the setup command (it creates the environment this test runs in; .ci/run runs it), the test
  command (the suite itself), and the training commands (they download CIFAR-10 and train for minutes).
  Every `kanvision fit` command of a skipped block is still parsed with `--print_config` appended, which
  checks each config file and option without training.

The blocks run in README order in one temporary directory, as a reader following the page would (the Python
block saves `img.jpg`, the predict block reads it), with the venv's bin/ first on PATH, as
`source .venv/bin/activate` leaves it, and KAN kernels eager (KANVISION_COMPILE=0, see env_with_venv). Also here: the weights table between the pretrained-table markers is the
one scripts/ship_pretrained.py writes from checkpoints/manifest.json, the README stays a front door (<= 150
lines), and its links to files of the repository resolve.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
MARKER = re.compile(r"^<!-- test: (?:(run)|skip \((.+)\)) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")

# First line of each shell block that is not run -> why (the README's marker says the same, in its words).
SKIPPED = {
    "bash scripts/setup.sh": "creates the venv this test runs in; .ci/run runs it before the suite",
    "kanvision fit --config configs/quickstart.yaml --data.train_subset 8500":
        "downloads CIFAR-10 and trains for minutes; parsed with --print_config below",
    "kanvision fit --config configs/trainer/cpu.yaml --config configs/experiment/cifar10_kan_mixer_tiny_p4_32.yaml "
    "--model.kan rswaf": "a 100-epoch recipe; parsed with --print_config below",
    ".venv/bin/pytest -q": "the test suite itself, which runs this file",
}


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    run: bool
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def code_blocks(text: str, where: str) -> list[Block]:
    """The fenced blocks of a markdown text, each with the test marker on the line before it (if any)."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise AssertionError(f"{where}:{start + 1}: code block is never closed")
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(Block(lang, "\n".join(lines[start + 1:end]) + "\n", start + 1,
                            run=bool(marker and marker.group(1)), skip_reason=marker.group(2) if marker else None))
        i = end + 1
    return blocks


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang == "python" or (b.lang == "bash" and b.run)]


def env_with_venv() -> dict:
    # KANVISION_COMPILE=0: the KAN kernels run eager here. A reader's run compiles them on first use, which adds
    # seconds per process and checks nothing these blocks are about (tests/test_compile.py covers compilation).
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", KANVISION_COMPILE="0")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # the venv's kanvision (the checkout, editable), not whatever the caller had
    return env


def execute(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-c", block.code] if block.lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(cmd, cwd=cwd, env=env_with_venv(), capture_output=True, text=True, timeout=600)


BLOCKS = code_blocks(README.read_text(), "README.md")


class Session:
    """Runs the README's runnable blocks in order, in one directory; a block's result needs every earlier one."""

    def __init__(self, directory: Path, blocks: list[Block]):
        self.dir, self.blocks, self.results = directory, blocks, {}

    def result(self, block: Block) -> subprocess.CompletedProcess:
        for b in self.blocks:
            if b not in self.results:
                self.results[b] = execute(b, self.dir)
            if b == block:
                return self.results[b]
        raise KeyError(block.id)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("readme"), runnable(BLOCKS))


def test_blocks_are_python_or_marked_bash():
    assert [b for b in BLOCKS if b.lang == "python"], "README.md has no python block to run"
    for b in BLOCKS:
        assert b.lang in ("python", "bash"), f"README.md:{b.line}: a ```{b.lang or '(no language)'} block; only python and bash are checked here"
        if b.lang == "python":
            assert b.skip_reason is None, f"README.md:{b.line}: python blocks always run; remove the skip marker"
        else:
            assert b.run or b.skip_reason, (f"README.md:{b.line}: bash block without `<!-- test: run -->` or "
                                            "`<!-- test: skip (reason) -->` on the line before it")


def test_the_skipped_shell_blocks_are_exactly_the_known_ones():
    skipped = {b.code.splitlines()[0].split("  #")[0].strip() for b in BLOCKS if b.lang == "bash" and not b.run}
    assert skipped == set(SKIPPED), ("a README shell block is skipped that SKIPPED does not list, or one SKIPPED "
                                     f"lists is gone: {sorted(skipped ^ set(SKIPPED))}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("python", "bash")], ids=lambda b: b.id)
@pytest.mark.slow
def test_block_runs_as_printed(block, session):
    if block.lang == "bash" and not block.run:
        first = block.code.splitlines()[0].split("  #")[0].strip()
        pytest.skip(f"README.md:{block.line}: not run: {SKIPPED.get(first, block.skip_reason)}")
    done = session.result(block)
    assert done.returncode == 0, (f"README.md:{block.line} ({block.lang}) exited {done.returncode}\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


def fit_commands(blocks: list[Block]) -> list[list[str]]:
    """`kanvision fit ...` commands of the skipped blocks, continuation lines joined, comments dropped."""
    commands = []
    for b in blocks:
        if b.lang != "bash" or b.run:
            continue
        for line in b.code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["kanvision", "fit"]:
                commands.append([os.path.expanduser(w) for w in words[1:]])
    return commands


@pytest.mark.slow
def test_skipped_training_commands_parse_with_print_config():
    """Each option and config file of the training commands is accepted (LightningCLI prints the resolved config
    and exits before building anything); one interpreter parses all of them."""
    commands = fit_commands(BLOCKS)
    assert len(commands) >= 2, "the README's training commands were not found"
    script = ("import json, sys\nfrom kanvision.cli import main\n"
              "for args in json.loads(sys.argv[1]):\n"
              "    try:\n        main(args + ['--print_config'])\n"
              "    except SystemExit as e:\n"
              "        if e.code not in (0, None):\n            raise\n"
              "    print('PARSED', ' '.join(args), file=sys.stderr)\n")
    done = subprocess.run([PYTHON, "-c", script, json.dumps(commands)], cwd=ROOT, env=env_with_venv(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("PARSED") == len(commands), done.stderr[-3000:]
    assert "train_subset: 8500" in done.stdout  # the flag reached the config, not just the parser


def test_weights_table_is_the_one_ship_pretrained_writes():
    spec = importlib.util.spec_from_file_location("ship_pretrained", ROOT / "scripts" / "ship_pretrained.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    manifest = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())
    text = README.read_text()
    table = text.split("<!-- pretrained-table -->\n", 1)[1].split("<!-- /pretrained-table -->", 1)[0]
    assert table.rstrip("\n").splitlines() == ship.readme_table_rows(manifest)


def test_readme_is_a_front_door_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "README.md over 150 lines: move the detail to a docs/ page"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
