"""Every shell command in README.md and docs/*.md works as written.

THE CONVENTION (for everyone who writes docs)
---------------------------------------------
* Shell blocks are fences labelled ``bash``, ``sh``, ``shell`` or ``zsh`` (``console`` blocks: only
  the lines starting with ``$ `` are commands). Output samples go in ```text, configs in ```yaml.
* **Run** (the default, no marker): the block runs with ``bash -e -o pipefail``, exactly as written,
  in a fresh temporary folder holding copies of the repository's ``configs/``, ``launch/`` and
  ``bench/`` — so commands are written as if typed at the repository root, with relative paths, and
  everything they write lands in the temporary folder. The folder already holds ``outputs/tiny/`` as
  ``sgdm prepare configs/tiny.yaml --synthetic`` writes it (raw data, cache, shards), prepared once
  per test session. PATH starts with the venv's bin (``sgdm``, ``python``, ``accelerate``,
  ``mlflow``); HOME is a temporary folder; MLFLOW_TRACKING_URI is unset; HF_HUB_OFFLINE=1; one
  thread per process. The blocks of one document run in order in ONE folder (a later block sees what
  an earlier one wrote); each document gets its own folder. A non-zero exit fails the test, naming
  ``file:line`` and the output's tail.
* ``<!-- docs-test: dry-run -->`` on the line directly above the fence: for commands that need a
  cluster, a GPU or a long run. The block must pass ``bash -n``; then each command is checked here,
  without a cluster:

  - ``sgdm launch k8s ...`` runs for real with ``--dry-run`` added (renders every manifest,
    submits nothing);
  - any other ``sgdm SUBCOMMAND ...``: the subcommand exists, every ``--option`` it names is in its
    ``--help``, and the config it names (the first ``*.yaml`` argument or ``--config X``) with its
    overrides (``a.b=c`` arguments, ``--set a.b=c``) passes ``sgdm config check``;
  - ``launch/train.sh CONFIG [OVERRIDES]``: the script is executable, ``ACCELERATE_CONFIG`` (when
    set on the line) exists, and the config with its overrides passes ``sgdm config check``;
  - ``make TARGET ...``: ``make -n TARGET ...`` succeeds in the repository;
  - ``python SCRIPT.py --opts``: ``python SCRIPT.py --help`` works and lists every option named;
  - any other program (kubectl, docker, curl, ...): every repository path it names (``configs/``,
    ``k8s/``, ``docker/``, ``launch/``, ``bench/``, ``tests/``) exists.
* ``<!-- docs-test: skip REASON -->`` on the line directly above the fence: not run at all. Only for
  what cannot be checked here even as a dry run; REASON is required. All documents together may skip
  fewer than 10 commands (counted by :func:`test_few_skipped_commands`).
* A marker that is not directly above a shell fence, or an unknown marker, fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "zsh", "console"}
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
SEED_DIRS = ("configs", "launch", "bench")
REPO_PREFIXES = ("configs/", "k8s/", "docker/", "launch/", "bench/", "tests/")
BLOCK_TIMEOUT_S = 1200  # a limit for a hung command, not a speed requirement
MAX_SKIPPED = 9


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    mode: str  # "run" | "dry-run" | "skip"
    reason: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    def script(self) -> str:
        if self.lang != "console":
            return self.text
        return "\n".join(x[2:] for x in self.text.splitlines() if x.startswith("$ "))


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse_blocks(doc: Path) -> tuple[list[Block], list[str]]:
    """The shell blocks of ``doc`` and the problems with its markers (stray or unknown)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        marker = MARKER.match(lines[i])
        if marker and not (i + 1 < len(lines) and _shell_fence(lines[i + 1])):
            problems.append(
                f"{doc.name}:{i + 1}: docs-test marker not directly above a shell fence"
            )
        if not fence:
            i += 1
            continue
        close = fence["ticks"][0] * len(fence["ticks"])
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(close):
            end += 1
        lang = fence["lang"].lower()
        if lang in SHELL_LANGS:
            mode, reason = "run", ""
            above = MARKER.match(lines[i - 1]) if i > 0 else None
            if above:
                mode, reason = above["kind"], above["reason"]
                if mode not in ("dry-run", "skip"):
                    problems.append(f"{doc.name}:{i}: unknown docs-test marker {mode!r}")
                if mode == "skip" and not reason:
                    problems.append(f"{doc.name}:{i}: 'docs-test: skip' needs a reason")
            body = "\n".join(x.removeprefix(fence["indent"]) for x in lines[i + 1 : end])
            blocks.append(Block(doc, i + 1, lang, mode, reason, body))
        i = end + 1
    return blocks, problems


def _shell_fence(line: str) -> bool:
    fence = FENCE.match(line)
    return bool(fence) and fence["lang"].lower() in SHELL_LANGS


def commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script as argv lists (env assignments kept in front).

    Continuation lines are joined, heredoc bodies dropped, comments removed; a command is cut at
    ``&&``, ``||``, ``;``, ``|`` and ``&``. Good enough for documentation, not a shell parser.
    """
    out: list[list[str]] = []
    pending = ""
    heredoc: str | None = None
    for raw in script.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        pending += raw[:-1] + " " if raw.endswith("\\") else raw + "\n"
        if raw.endswith("\\"):
            continue
        try:
            lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|<>()")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        here = re.search(r"<<-?\s*['\"]?(\w+)", pending)
        heredoc = here.group(1) if here else None
        pending = ""
        current: list[str] = []
        redirect = False
        for token in tokens:
            if token and set(token) <= set(";&|<>()"):
                redirect = bool(set(token) & set("<>"))  # the next token is a file, not an arg
                if not redirect and current:
                    out.append(current)
                    current = []
            elif redirect:
                redirect = False
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    i = 0
    while i < len(argv) and re.match(r"^[A-Za-z_]\w*=", argv[i]):
        key, _, value = argv[i].partition("=")
        env[key] = value
        i += 1
    return env, argv[i:]


ALL_BLOCKS = [b for d in documents() for b in parse_blocks(d)[0]]
RUN_DOCS = sorted({b.doc for b in ALL_BLOCKS if b.mode == "run"})
DRY_BLOCKS = [b for b in ALL_BLOCKS if b.mode == "dry-run"]


# ---------------------------------------------------------------------------------------------
# the environment commands run in


def docs_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        VIRTUAL_ENV=str(BIN.parent),
    )
    env.pop("PYTHONPATH", None)
    return env


def _run(
    argv: list[str] | str, cwd: Path, env: dict[str, str], timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=isinstance(argv, str),
        executable="/bin/bash" if isinstance(argv, str) else None,
    )


def _tail(result: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-n:]}\n--- stderr ---\n{result.stderr[-n:]}"


@pytest.fixture(scope="module")
def seed(tiny_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/, launch/, bench/ and the tiny dataset as `sgdm prepare ... --synthetic` writes it.

    The dataset is the session's (conftest.py's ``tiny_shards``: the same command, with its paths
    pointed elsewhere), copied into ``outputs/tiny/`` rather than prepared a second time.
    """
    root = tmp_path_factory.mktemp("docs-seed")
    for name in SEED_DIRS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, root / name, symlinks=True)
    (root / "home").mkdir()
    data = {k: Path(v) for k, v in (o.split("=", 1) for o in tiny_shards)}
    tiny = root / "outputs" / "tiny"  # configs/tiny.yaml's data paths, relative to the root
    for key, name in (
        ("data.raw_dir", "raw"),
        ("data.cache_dir", "cache"),
        ("data.shard_dir", "shards"),
    ):
        shutil.copytree(data[key], tiny / name, symlinks=True)
    assert data["data.image_dir"] == data["data.raw_dir"] / "images"  # as in configs/tiny.yaml
    return root


@pytest.fixture
def fresh(seed: Path, tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    shutil.copytree(seed, work, symlinks=True)
    yield work


# ---------------------------------------------------------------------------------------------
# the tests


def test_markers_are_valid() -> None:
    problems = [p for d in documents() for p in parse_blocks(d)[1]]
    assert not problems, "\n".join(problems)


def test_few_skipped_commands() -> None:
    skipped = [
        (b.where, b.reason, c) for b in ALL_BLOCKS if b.mode == "skip" for c in commands(b.script())
    ]
    listing = "\n".join(f"  {w} ({r}): {' '.join(c)}" for w, r, c in skipped)
    print(f"{len(skipped)} skipped documented commands:\n{listing}")
    assert len(skipped) <= MAX_SKIPPED, (
        f"{len(skipped)} skipped commands (at most {MAX_SKIPPED}):\n{listing}"
    )


def test_parser_sees_commands() -> None:
    script = 'A=1 sgdm x y \\\n  --z 2 && echo "a # b" # c\ncat > f <<EOF\nbody line\nEOF\nls'
    assert commands(script) == [
        ["A=1", "sgdm", "x", "y", "--z", "2"],
        ["echo", "a # b"],
        ["cat"],
        ["ls"],
    ]


@pytest.mark.slow
@pytest.mark.timeout(2 * BLOCK_TIMEOUT_S)
@pytest.mark.parametrize("doc", RUN_DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_doc_commands_run(doc: Path, fresh: Path) -> None:
    """Every unmarked shell block of ``doc``, in order, in one fresh folder."""
    env = docs_env(fresh / "home")
    for block in (b for b in ALL_BLOCKS if b.doc == doc and b.mode == "run"):
        script = "set -e -o pipefail\n" + block.script()
        result = _run(script, fresh, env, timeout=BLOCK_TIMEOUT_S)
        assert result.returncode == 0, (
            f"{block.where} failed as written:\n{block.text}\n{_tail(result)}"
        )


@pytest.mark.parametrize("block", DRY_BLOCKS, ids=lambda b: b.where)
def test_doc_commands_dry_run(block: Block, tmp_path: Path) -> None:
    check = subprocess.run(["bash", "-n"], input=block.script(), capture_output=True, text=True)
    assert check.returncode == 0, f"{block.where}: not valid bash: {check.stderr}"
    work = tmp_path / "work"
    work.mkdir()
    for name in SEED_DIRS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, work / name, symlinks=True)
    env = docs_env(tmp_path)
    for argv in commands(block.script()):
        problem = _dry_check(argv, work, env)
        assert problem is None, f"{block.where}: {' '.join(argv)}\n{problem}"


def _dry_check(argv: list[str], work: Path, env: dict[str, str]) -> str | None:
    line_env, argv = split_env(argv)
    if not argv:
        return None
    program = argv[0]
    if program == "sgdm":
        return _dry_sgdm(argv[1:], work, env)
    if program.endswith("launch/train.sh"):
        return _dry_train_sh(argv[1:], line_env, work, env)
    if program in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        return _dry_script(argv[1:], work, env)
    if program == "make":
        result = _run(["make", "-n", *argv[1:]], REPO, env)
        return None if result.returncode == 0 else _tail(result)
    missing = [a for a in argv if a.startswith(REPO_PREFIXES) and not _repo_path(a).exists()]
    return f"names repository paths that do not exist: {missing}" if missing else None


_HELP: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


def _help(argv: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv --help``, once per command line in this session (imports cost seconds each)."""
    key = tuple(argv)
    if key not in _HELP:
        _HELP[key] = _run([*argv, "--help"], work, env)
    return _HELP[key]


def _dry_script(args: list[str], work: Path, env: dict[str, str]) -> str | None:
    """``python SCRIPT --opts``: the script's ``--help`` runs and lists every option named."""
    helped = _help([str(BIN / "python"), str(REPO / args[0])], work, env)
    if helped.returncode != 0:
        return f"`python {args[0]} --help` failed:\n{_tail(helped)}"
    options = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
    unknown = sorted(o for o in options if o not in helped.stdout)
    return f"options not in `python {args[0]} --help`: {unknown}" if unknown else None


def _repo_path(arg: str) -> Path:
    return REPO / arg.split("=", 1)[-1].rstrip("/.").removesuffix("/.")


def _dry_sgdm(args: list[str], work: Path, env: dict[str, str]) -> str | None:
    sgdm = str(BIN / "sgdm")
    if args[:2] == ["launch", "k8s"]:
        rendered = _run(f"{shlex.join([sgdm, *args])} --dry-run", work, env)
        return None if rendered.returncode == 0 else _tail(rendered)
    path = args[:2] if args[:1] == ["config"] else args[:1]
    helped = _help([sgdm, *path], work, env)
    if helped.returncode != 0:
        return f"`sgdm {' '.join(path)}` is not a command:\n{_tail(helped)}"
    options = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    unknown = sorted(o for o in options if o not in helped.stdout)
    if unknown:
        return f"options not in `sgdm {' '.join(path)} --help`: {unknown}"
    return _config_check(args[len(path) :], work, env)


def _dry_train_sh(
    args: list[str], line_env: dict[str, str], work: Path, env: dict[str, str]
) -> str | None:
    script = REPO / "launch" / "train.sh"
    if not os.access(script, os.X_OK):
        return f"{script} is not executable"
    accelerate = line_env.get("ACCELERATE_CONFIG")
    if accelerate and not (work / accelerate).is_file():
        return f"ACCELERATE_CONFIG={accelerate} does not exist"
    return _config_check(args, work, env)


def _config_check(args: list[str], work: Path, env: dict[str, str]) -> str | None:
    """`sgdm config check` on the config and overrides a command line names (None: no config)."""
    config = None
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "--set") and i + 1 < len(args):
            if arg == "--config":
                config = args[i + 1]
            else:
                overrides.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif not arg.startswith("-") and arg.endswith((".yaml", ".yml")) and config is None:
            config = arg
        elif not arg.startswith("-") and re.match(r"^[\w.]+=", arg):
            overrides.append(arg)
        i += 1
    if config is None:
        return None
    result = _run([str(BIN / "sgdm"), "config", "check", config, *overrides], work, env)
    return None if result.returncode == 0 else _tail(result)
