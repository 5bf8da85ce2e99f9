"""Every command line written in README.md and docs/*.md runs as written: its parser accepts it.

The command lines are taken from ```sh code blocks (a line, its `\\` continuations, up to a `# comment`) and from
inline `code` spans, both those in the prose and those inside a code block's comment. A line counts when it starts
with `spikeforge `, `make `, `python -m MODULE` or `torchrun ... -m MODULE`. Nothing runs: `spikeforge X` goes
through the command line's parser (or, for the subcommands in spikeforge.cli.DELEGATED, the parser of the module
that main() hands them to), `make TARGET VAR=...` is checked against the Makefile's targets and variables, and
`python -m MODULE args` must find MODULE and, where it has build_parser(), be accepted by it.

Shell words the parser cannot see through are opaque arguments: `$VAR`, globs (`docs/runs/*.json`), placeholders
(`FILE`, `RUN_DIR...`, `build/<run>/x.pt`). A placeholder where a subcommand belongs (`spikeforge COMMAND --help`)
is checked with every subcommand. An inline span that is only `spikeforge SUBCOMMAND` (or `python -m MODULE`)
names a command in prose: only that the command exists is checked.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from spikeforge import cli, netimage

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "sh", "shell", "bash", "console", "zsh"}
# a command word: spikeforge, make, python -m, torchrun (optionally behind a path, e.g. .venv/bin/python)
COMMAND_START = re.compile(r"^(spikeforge|make|(\S*/)?python3?(\.\d+)?\s+-m|(\S*/)?torchrun)(\s|$)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", "|", ";", "&"}
REDIRECTION = re.compile(r"^\d*(>>?|<)(&\d+)?")


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str
    inline: bool  # from an inline `code` span rather than a code block line

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


# ------------------------------------------------------------------------------------------------------ extraction

def _split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: a `#` that starts a shell word outside quotes begins the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:]
    return line.rstrip(), ""


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """``(offset, content)`` of the inline code spans of one paragraph of markdown (`\\|` read as `|`)."""
    return [(match.start(2), " ".join(match.group(2).replace("\\|", "|").split()))
            for match in re.finditer(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.DOTALL)]


def _paragraphs(lines: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Numbered lines grouped into paragraphs: split at blank lines, and every table row on its own."""
    paragraphs, current = [], []
    for number, line in lines:
        if not line.strip() or line.lstrip().startswith("|"):
            paragraphs.append(current)
            current = [(number, line)] if line.strip() else []
            if line.strip():
                paragraphs.append(current)
                current = []
        else:
            current.append((number, line))
    paragraphs.append(current)
    return [p for p in paragraphs if p]


def _is_command(text: str) -> bool:
    words = text.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    # a lone `spikeforge` or `torchrun` is a name in prose, not a command line
    return len(words) > 1 and bool(COMMAND_START.match(" ".join(words)))


def extract_commands(path: Path, root: Path = ROOT) -> list[DocCommand]:
    """The command lines of one markdown file, with the line each starts on (the file named relative to root)."""
    name = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    commands: list[DocCommand] = []
    prose: list[tuple[int, str]] = []  # (line number, text) outside code blocks
    fence = None  # the fence that opened the current code block, with its info string
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opener = re.match(r"^(```+|~~~+)\s*([\w+-]*)", stripped)
        if fence is None and opener:
            fence = (opener.group(1), opener.group(2).lower())
            i += 1
            continue
        if fence is not None:
            if stripped.startswith(fence[0]) and stripped.strip(fence[0][0]) == "":
                fence = None
                i += 1
                continue
            if fence[1] not in SHELL_FENCES:
                i += 1
                continue
            start = i
            logical = stripped
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical[:-1].rstrip() + " " + lines[i].strip()
            logical = re.sub(r"^\$\s+", "", logical)  # a shell prompt
            command, comment = _split_comment(logical)
            if _is_command(command):
                commands.append(DocCommand(name, start + 1, command, inline=False))
            for _, span in _inline_spans(comment):
                if _is_command(span):
                    commands.append(DocCommand(name, start + 1, span, inline=True))
            i += 1
            continue
        prose.append((i + 1, line))
        i += 1

    # inline spans per paragraph (a span may run over a line break, never out of its paragraph or table row)
    for paragraph in _paragraphs(prose):
        text = "\n".join(line for _, line in paragraph)
        starts = [sum(len(line) + 1 for _, line in paragraph[:k]) for k in range(len(paragraph))]
        for position, span in _inline_spans(text):
            if _is_command(span):
                number = paragraph[max(k for k, start in enumerate(starts) if start <= position)][0]
                commands.append(DocCommand(name, number, span, inline=True))
    return sorted(commands, key=lambda c: c.line)


def all_commands() -> list[DocCommand]:
    return [command for path in DOCS for command in extract_commands(path)]


# ------------------------------------------------------------------------------------------------------ checking

def _words(text: str) -> list[list[str]]:
    """The simple commands of a shell line, each as its words (redirections and env assignments dropped)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    pipeline, current, skip_next = [], [], False
    for word in lexer:
        if skip_next:
            skip_next = False
        elif word in SEPARATORS:
            pipeline.append(current)
            current = []
        elif REDIRECTION.match(word):
            skip_next = re.fullmatch(r"\d*(>>?|<)", word) is not None  # `> file`: the file is the next word
        elif not current and ENV_ASSIGNMENT.match(word):
            continue
        else:
            current.append(word[:-3] if PLACEHOLDER.match(word) and word.endswith("...") else word)
    pipeline.append(current)
    return [words for words in pipeline if words]


def _fill_placeholders(parser, args: list[str]) -> list[str]:
    """``args`` with a placeholder option value (`--lif L`) replaced by a value the option takes."""
    filled = list(args)
    for i in range(1, len(filled)):
        action = parser._option_string_actions.get(filled[i - 1])
        if action is None or not PLACEHOLDER.match(filled[i]):
            continue
        if action.choices:
            filled[i] = str(next(iter(action.choices)))
        elif action.type in (int, float):
            filled[i] = "1"
    return filled


def _alternatives(args: list[str]) -> list[list[str]]:
    """Every reading of ``args`` where a word `a|b` (the docs' "a or b") is one of its alternatives."""
    readings = [[]]
    for word in args:
        parts = word.split("|")
        choices = parts if len(parts) > 1 and all(parts) and "://" not in word else [word]
        readings = [reading + [choice] for reading in readings for choice in choices]
    return readings


def _parse(parser, args: list[str], options_of=None) -> str | None:
    """None when ``parser`` accepts every reading of ``args`` (help included), else argparse's complaint.

    ``options_of`` is the (sub)parser whose options the arguments use, when it is not ``parser`` itself."""
    for reading in _alternatives(args):
        reading = _fill_placeholders(options_of or parser, reading)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
                parser.parse_args(reading)
        except SystemExit as exc:
            if exc.code not in (0, None):
                complaint = stderr.getvalue().strip().splitlines()
                return complaint[-1] if complaint else f"the parser exits with status {exc.code}"
    return None


def _subparsers(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "command").choices


def _subcommands() -> list[str]:
    return list(_subparsers(cli.build_parser()))


def _check_spikeforge(args: list[str], inline: bool) -> str | None:
    if inline and len(args) == 1 and not args[0].startswith("-"):
        return None if args[0] in _subcommands() else f"spikeforge has no subcommand {args[0]!r}"
    if args and PLACEHOLDER.match(args[0]):
        for name in _subcommands():
            problem = _check_spikeforge([name, *args[1:]], inline=False)
            if problem:
                return f"with {args[0]} = {name}: {problem}"
        return None
    if args and args[0] in cli.DELEGATED:
        module = importlib.import_module(cli.DELEGATED[args[0]])
        return _parse(module.build_parser(), args[1:])
    parser = cli.build_parser()
    return _parse(parser, args, _subparsers(parser).get(args[0]) if args else None)


def _check_module(module: str, args: list[str], inline: bool) -> str | None:
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return f"no module named {module}"
    if inline and not args:
        return None
    if module in ("spikeforge.cli", "spikeforge"):
        return _check_spikeforge(args, inline)
    imported = importlib.import_module(module)
    if hasattr(imported, "build_parser"):
        return _parse(imported.build_parser(), args)
    return None


def _makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and the variables it reads."""
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for match in re.finditer(r"^([^\s#=:][^=:]*?)\s*::?(?!=)", text, re.MULTILINE):
        targets.update(word for word in match.group(1).split() if "$" not in word)
    variables = set(re.findall(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]", text))
    return targets, variables


def _check_make(args: list[str]) -> str | None:
    targets, variables = _makefile()
    problems = []
    for word in args:
        if word.startswith("-"):
            continue
        if "=" in word:
            name = word.split("=", 1)[0]
            if name not in variables:
                problems.append(f"the Makefile reads no variable {name}")
        elif word not in targets:
            problems.append(f"the Makefile has no target {word!r}")
    return "; ".join(problems) or None


def _check_torchrun(args: list[str]) -> str | None:
    from torch.distributed.run import get_args_parser

    problem = _parse(get_args_parser(), args)
    if problem:
        return f"torchrun: {problem}"
    if "-m" not in args and "--module" not in args:
        return None
    # torchrun's own options come first; its first positional word is the script (here: the module)
    parsed = get_args_parser().parse_args(args)
    return _check_module(parsed.training_script, list(parsed.training_script_args), inline=False)


def check(command: DocCommand) -> str | None:
    """None when every simple command of the line is accepted, else what is wrong."""
    try:
        pipeline = _words(command.text)
    except ValueError as exc:  # unbalanced quotes
        return f"not a shell line ({exc})"
    for words in pipeline:
        program = words[0].rsplit("/", 1)[-1]
        if program == "spikeforge":
            problem = _check_spikeforge(words[1:], command.inline)
        elif program == "make":
            problem = _check_make(words[1:])
        elif re.fullmatch(r"python3?(\.\d+)?", program) and words[1:2] == ["-m"] and len(words) > 2:
            problem = _check_module(words[2], words[3:], command.inline)
        elif program == "torchrun":
            problem = _check_torchrun(words[1:])
        else:
            continue
        if problem:
            return problem
    return None


# ------------------------------------------------------------------------------------------------------ tests

def test_the_docs_have_command_lines():
    commands = all_commands()
    files = {c.file for c in commands}
    assert "README.md" in files and "docs/hardware-flow.md" in files and "docs/training.md" in files
    texts = [c.text for c in commands]
    assert any(t.startswith("make sim") for t in texts) and any(t.startswith("torchrun ") for t in texts)


def test_every_documented_command_line_is_accepted():
    bad = []
    for command in all_commands():
        problem = check(command)
        if problem:
            bad.append(f"{command.where()}\n    -> {problem}")
    assert not bad, (f"{len(bad)} command line(s) in README.md / docs/*.md would be refused as written "
                     f"(fix the doc, or the command line where the doc describes the better behaviour):\n"
                     + "\n".join(bad))


@pytest.mark.slow
def test_make_sim_runs_as_the_readme_says(tmp_path):
    """`make sim` on a clean clone: a tiny random network that takes MNIST images, two of them, in Icarus."""
    from spikeforge.testing import random_network

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    net = random_network(7, input_shape=(1, 28, 28), layers=[("conv", 2, 3, 4, 1), ("dense", 10)], time_steps=4)
    path = netimage.save(net, tmp_path / "tiny.sfnet")
    started = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", "sim", f"NET={path}", "IMAGES=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RTL bit-exact with the integer reference at T=4 on 2 images" in done.stdout, done.stdout[-3000:]
    print(f"\nmake sim, 2 images, {len(net.populations)} populations: {time.perf_counter() - started:.1f} s")


# the extractor and checker themselves, on made-up markdown

def test_extraction_handles_continuations_comments_and_spans(tmp_path):
    markdown = ("Intro with `spikeforge inspect\nnet.sfnet` over a line break and `pip install x`.\n\n"
                "```sh\n"
                "spikeforge run net.sfnet \\\n    --backend int   # the `make sim` target does this\n"
                "OMP_NUM_THREADS=2 spikeforge train --dataset mnist\n"
                "echo spikeforge run\n"
                "```\n\n"
                "```python\nspikeforge run is python here\n```\n"
                "| table | `spikeforge run x --lif a\\|b` |\n")
    (tmp_path / "doc.md").write_text(markdown)
    commands = extract_commands(tmp_path / "doc.md", tmp_path)
    assert [(c.line, c.text, c.inline) for c in commands] == [
        (1, "spikeforge inspect net.sfnet", True),
        (5, "spikeforge run net.sfnet --backend int", False),
        (5, "make sim", True),
        (7, "OMP_NUM_THREADS=2 spikeforge train --dataset mnist", False),
        (14, "spikeforge run x --lif a|b", True),
    ]


def test_checker_accepts_good_lines_and_names_bad_ones():
    def verdict(text, inline=False):
        return check(DocCommand("x.md", 1, text, inline))

    assert verdict("spikeforge run net.sfnet --backend rtl --images 20") is None
    assert verdict("spikeforge results RUN_DIR... docs/runs/*.json --accuracy-vs-t $RUN") is None
    assert verdict("spikeforge COMMAND --help") is None
    assert verdict("spikeforge run", inline=True) is None
    assert verdict("make sim NET=$NET DATASET=mnist") is None
    assert verdict("spikeforge run net.sfnet 2>&1 | tee log.txt") is None
    assert verdict("spikeforge run net.sfnet --backend int|rtl --dataset D") is None
    assert "invalid choice: 'verilog'" in verdict("spikeforge run net.sfnet --backend int|verilog")
    assert "unrecognized arguments: --compare" in verdict("spikeforge run n.sfnet --backend rtl --compare")
    assert "invalid choice" in verdict("spikeforge run n.sfnet --backend verilog")
    assert "no target 'simulate'" in verdict("make simulate")
    assert "no variable FROB" in verdict("make sim FROB=1")
    assert "no subcommand 'frob'" in verdict("spikeforge frob", inline=True)
    assert "no module named spikeforge.sw.nothing" in verdict("python -m spikeforge.sw.nothing --x")
    assert verdict("python -m spikeforge.sw.export ckpt.pt -o n.sfnet") is None
    assert "unrecognized arguments" in verdict("python -m spikeforge.sw.export ckpt.pt -o n.sfnet --frob")
