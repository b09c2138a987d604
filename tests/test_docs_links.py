"""The docs belong to the repository: every relative link in README.md and docs/*.md resolves (its
heading too), every source file a doc names exists, every flag a doc's command passes to one of its
scripts is one that script takes, and no file cites a document the repository does not have."""

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "runs", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".txt", ".cfg", ".ini", ".toml"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`([\w./-]+\.(?:py|md|yaml|sbatch))`")
DOCUMENT = re.compile(r"[\w./-]*[\w-]\.md\b")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
# a script of the repository and what follows it on its line (or its continued lines)
COMMAND = re.compile(r"\b((?:tools|examples)/[\w/]+\.py)((?:[^`\n\\]|\\\n)*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _repo_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            yield Path(folder, name).relative_to(ROOT)


FILES = sorted(_repo_files())
POSIX = [p.as_posix() for p in FILES]
# a named path is checked when it starts at the repository's or the package's top level
TOP_LEVEL = {p.parts[0] for p in FILES} | {p.parts[1] for p in FILES if len(p.parts) > 2 and p.parts[0] == "megatron_rcm"}


def _exists_as_suffix(path):
    """True if some repository file's path ends with ``path`` (docs name files relative to the
    repository, to the package or by their own name)."""
    path = path.lstrip("./")
    return any(p == path or p.endswith("/" + path) for p in POSIX)


def _relative_links(doc):
    for target in LINK.findall(doc.read_text()):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    missing = [t for t in _relative_links(doc) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to {missing}"


def _anchors(doc):
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as
    hyphens (code blocks hold no headings)."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_anchors_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        path, _, anchor = target.partition("#")
        if anchor and not re.match(r"[a-z]+:", target):
            linked = doc.parent / path if path else doc
            if linked.suffix == ".md" and anchor not in _anchors(linked):
                missing.append(target)
    assert not missing, f"{doc.name} links to headings that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_source_files_exist(doc):
    # a bare name may be another project's file (Wan's ``shared_config.py``): only paths are checked
    named = {p for p in CODE_PATH.findall(doc.read_text()) if "/" in p and p.split("/")[0] in TOP_LEVEL}
    missing = sorted(p for p in named if not _exists_as_suffix(p))
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def _prose(path):
    """What a file says to its reader: a Python file's comments and docstrings (its string
    literals are data, such as output names), any other text file whole."""
    text = (ROOT / path).read_text(errors="replace")
    if path.suffix != ".py":
        return text
    tree = ast.parse(text)
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    docstrings = [ast.get_docstring(n) or "" for n in nodes]
    comments = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
    return "\n".join(docstrings + comments)


def _cited_documents(path):
    """Documents a file refers to; an output under a placeholder folder (``WORK/table.md``) is none."""
    return {m for m in DOCUMENT.findall(_prose(path))
            if "://" not in m and not any(part.isupper() for part in m.split("/")[:-1])}


def test_no_file_cites_a_missing_document():
    text_files = [p for p in FILES if p.suffix in TEXT_SUFFIXES or p.name == "Makefile"]
    missing = {str(p): sorted(d for d in _cited_documents(p) if not _exists_as_suffix(d)) for p in text_files}
    missing = {p: d for p, d in missing.items() if d}
    assert not missing, f"files cite documents that are not in the repository: {missing}"


def test_the_checks_find_what_they_look_for():
    assert _exists_as_suffix("training/loop.py") and _exists_as_suffix("docs/math.md")
    assert not _exists_as_suffix("rcm-math.md")
    assert DOCUMENT.findall("see rcm-math.md section 4 and [x](docs/math.md)") == ["rcm-math.md", "docs/math.md"]
    assert list(LINK.findall("[a](math.md#x) [b](https://example.com)")) == ["math.md#x", "https://example.com"]


def _documented_flags():
    """{script: {flag: docs}} of the commands in README.md and docs/*.md (their code, not prose),
    without benchmarks.md, whose commands are a record of past runs. Flags after a lone ``--`` go
    to another program (``bench_train.py -- FLAGS`` passes them to the trainer)."""
    found = {}
    for doc in DOCS:
        if doc.name == "benchmarks.md":
            continue
        for code in CODE.findall(doc.read_text()):
            for script, rest in COMMAND.findall(code):
                for flag in FLAG.findall(rest.split(" -- ")[0]):
                    found.setdefault(script, {}).setdefault(flag, set()).add(doc.name)
    return found


DOCUMENTED_FLAGS = _documented_flags()


@pytest.mark.parametrize("script", sorted(DOCUMENTED_FLAGS))
def test_documented_commands_pass_flags_their_script_takes(script):
    run = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    unknown = {flag: sorted(docs) for flag, docs in DOCUMENTED_FLAGS[script].items()
               if flag not in FLAG.findall(run.stdout)}
    assert not unknown, f"{script} takes no {unknown}"


def test_the_command_check_reads_commands():
    assert len(DOCUMENTED_FLAGS) >= 8 and "--teacher" in DOCUMENTED_FLAGS["examples/pretrain_rcm.py"]
    code = "```\npython tools/plan.py --gpus 8 \\\n    --tp 2 -- --not-its-own\n```\nand tools/plan.py --prose"
    assert [(s, FLAG.findall(r.split(" -- ")[0])) for c in CODE.findall(code) for s, r in COMMAND.findall(c)] == [
        ("tools/plan.py", ["--gpus", "--tp"])]
