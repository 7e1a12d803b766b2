"""The docs site builds with `mkdocs build --strict` (no warning: broken links and anchors, pages left out of
the nav, docstrings mkdocstrings cannot render, an unknown generated-table marker), and its code marked
`<!-- test: run -->` runs as printed.

The build uses mkdocs.yml at the repository root and writes into a temporary directory; the generated tables
(`kanvision kinds`, checkpoints/manifest.json, benchmarks/RESULTS*.md) come from scripts/docs_tables.py, the
hook mkdocs.yml names, so the build also checks that those sources still produce a table.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_readme import PYTHON, code_blocks, env_with_venv  # noqa: E402  (the README test's block reader)

DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.fail("mkdocs / mkdocstrings are not installed: `.venv/bin/pip install -e '.[test]'` (the test extra "
                    "includes the docs extra)")
    out = tmp_path_factory.mktemp("site")
    env = dict(env_with_venv(), NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([PYTHON, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return out, done


@pytest.mark.slow
def test_mkdocs_build_strict_has_no_warning(site):
    out, done = site
    log = done.stdout + done.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not warnings, "\n".join(warnings) or log[-3000:]
    assert (out / "index.html").is_file() and (out / "kinds" / "index.html").is_file()


def test_generated_tables_are_in_the_built_pages(site):
    out, _ = site
    from kanvision.kinds import kind_names

    kinds = (out / "kinds" / "index.html").read_text()
    assert "<!-- generated:" not in kinds
    for name in kind_names():
        assert f"<code>{name}</code>" in kinds, f"kind {name!r} missing from the kinds page"
    manifest = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())
    home, weights = (out / "index.html").read_text(), (out / "checkpoints" / "index.html").read_text()
    for entry in manifest["entries"]:
        assert entry["tag"] in home and entry["tag"] in weights
    speed = (out / "speed" / "index.html").read_text()
    for path in sorted((ROOT / "benchmarks").glob("RESULTS*.md")):
        assert f"benchmarks/{path.name}" in speed


RUN_SCRIPT = """
import json, os, sys, traceback
failed = []
for where, code in json.loads(sys.argv[1]):
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except BaseException:
        failed.append(where + "\\n" + traceback.format_exc())
if failed:
    sys.exit("\\n".join(failed))
"""


@pytest.mark.slow
def test_marked_python_blocks_of_the_docs_run(tmp_path):
    """Each marked block in a fresh namespace, all in one interpreter (one import of torch, timm, kanvision)."""
    blocks = [(f"docs/{page.relative_to(DOCS)}:{b.line}", b.code) for page in sorted(DOCS.rglob("*.md"))
              for b in code_blocks(page.read_text(), str(page)) if b.lang == "python" and b.run]
    assert any("custom-kind.md" in where for where, _ in blocks), "the add-your-own-kind example is not marked to run"
    done = subprocess.run([PYTHON, "-c", RUN_SCRIPT, json.dumps(blocks)], cwd=tmp_path, env=env_with_venv(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
