"""Every example in README.md runs, and every output shown in it is what the code prints.

Conventions in README.md (an HTML comment on the line right before a fence):
  ```python                 run, in a fresh namespace (each example stands alone, so it
                            can be copied as is).
  <!-- continue -->         run in the namespace of the python block(s) before it.
  <!-- output -->           a ```text block: the stdout of the python block before it.
  <!-- file: NAME.py -->    a ```python block that is the file NAME.py used by the
                            console examples (written to a temporary directory, not run).
  ```console                `$ jaxcheck ...` lines are run (as `python -m jaxcheck`) in that
                            directory; the lines after a command are its stdout, and
                            `$ echo $?` shows the previous command's exit code.
  <!-- skip -->             not run (used sparingly: only for shell snippets that install
                            things or run the whole suite).
Outputs are compared line by line with whitespace runs collapsed, wall-clock times
masked, the worst element of a passed leaf or block (rounding) masked, and numbers compared to 3% (numbers below 1e-6 in magnitude, rounding-level
relative errors, only need to be below 1e-6 on both sides), so a different CPU does not
fail the test; a changed verdict, path, count or wording does.

To refresh the outputs after a deliberate change of the report format, run
`python3 tests/test_readme.py --update`, review the diff of README.md, and commit it.
"""

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIRST_LINES = (
    "make demo    # run the built-in demonstration (installs into .venv first)",
    "make test    # run the whole test suite (installs into .venv first)",
)
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(skip|continue|output|file:\s*(\S+))\s*-->\s*$")
_SECONDS = re.compile(r"\b\d+(\.\d+)?(?= s\b)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    marker: str | None  # "skip", "continue", "output", "file" or None
    filename: str | None = None


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, with the marker comment before each."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md:{start + 1}: unclosed code fence")
        marker = filename = None
        if start > 0 and (m := _MARKER.match(lines[start - 1].strip())):
            marker = "file" if m.group(2) else m.group(1)
            filename = m.group(2)
        blocks.append(
            Block(
                match.group(1),
                "\n".join(lines[start + 1 : j]) + "\n",
                start + 1,
                j + 1,
                marker,
                filename,
            )
        )
        i = j + 1
    return blocks


@dataclasses.dataclass
class Example:
    """A run of python blocks sharing one namespace, each optionally followed by its output."""

    steps: list[tuple[Block, Block | None]]

    @property
    def id(self) -> str:
        return f"README.md:{self.steps[0][0].line}"


def python_examples(blocks: list[Block]) -> list[Example]:
    examples: list[Example] = []
    for k, block in enumerate(blocks):
        if block.lang != "python" or block.marker in ("skip", "file"):
            continue
        following = blocks[k + 1] if k + 1 < len(blocks) else None
        output = following if following is not None and following.marker == "output" else None
        if block.marker == "continue":
            if not examples:
                raise ValueError(
                    f"README.md:{block.line}: `<!-- continue -->` with no python block before it"
                )
            examples[-1].steps.append((block, output))
        else:
            examples.append(Example([(block, output)]))
    return examples


def console_blocks(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang == "console" and b.marker != "skip"]


def file_blocks(blocks: list[Block]) -> dict[str, str]:
    return {b.filename: b.code for b in blocks if b.marker == "file"}


def _blocks() -> list[Block]:
    return parse_blocks(README.read_text())


# ----------------------------------------------------------------------------
# Output comparison.


_PASSED_ROW = re.compile(r"^\s*(\S+\s+passed\s+\S+)\s")


def _normalize(line: str) -> str:
    # A passed leaf's or block's "worst" element is the one closest to its tolerance: which
    # one that is, and its values, are rounding and differ between CPUs. Compare the row's
    # path, status and array only.
    row = _PASSED_ROW.match(line)
    if row and "[" in line[row.end() :]:
        line = row.group(1) + " <rounding>"
    return " ".join(_SECONDS.sub("<t>", line).split())


def _numbers_close(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    if x == y:
        return True
    if abs(x) < 1e-6 and abs(y) < 1e-6:
        return True
    return abs(x - y) <= 0.03 * max(abs(x), abs(y))


def outputs_match(actual: str, expected: str) -> str | None:
    """None when `actual` matches `expected` as described above, else the first difference."""
    got = [_normalize(l) for l in actual.strip("\n").splitlines()]
    want = [_normalize(l) for l in expected.strip("\n").splitlines()]
    for k, (g, w) in enumerate(zip(got, want)):
        if _NUMBER.sub("#", g) != _NUMBER.sub("#", w):
            return f"line {k + 1} differs:\n  README: {w}\n  actual: {g}"
        for a, b in zip(_NUMBER.findall(g), _NUMBER.findall(w)):
            if not _numbers_close(a, b):
                return f"line {k + 1}: number {a} (actual) vs {b} (README):\n  README: {w}\n  actual: {g}"
    if len(got) != len(want):
        return f"{len(got)} lines of output, README shows {len(want)}; first extra line: {(got + want)[min(len(got), len(want))]!r}"
    return None


# ----------------------------------------------------------------------------
# Running.


def run_example(example: Example) -> list[tuple[Block, Block | None, str]]:
    """Executes the example's blocks in one namespace; returns (block, output block, stdout)."""
    namespace: dict = {"__name__": "__readme__"}
    outputs = []
    for block, output in example.steps:
        buffer = io.StringIO()
        code = compile(
            "\n" * (block.line) + block.code, str(README), "exec"
        )  # README line numbers in tracebacks
        with contextlib.redirect_stdout(buffer):
            exec(code, namespace)  # noqa: S102 - running the documentation is the point
        outputs.append((block, output, buffer.getvalue()))
    return outputs


def _split_console(block: Block) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:].strip(), []))
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise ValueError(
                f"README.md:{block.line}: console block must start with a `$ ` command"
            )
    return [(cmd, "\n".join(out)) for cmd, out in pairs]


def run_console(
    block: Block, files: dict[str, str], workdir: Path, base_env: dict | None = None
) -> list[tuple[str, str, str]]:
    """Runs a console block's commands (in `base_env`, default `os.environ`); returns
    (command, expected, actual) triples. Their stdout is a pipe, so the CLI must print an
    uncoloured report (a colour code would fail the comparison)."""
    for name, code in files.items():
        (workdir / name).write_text(code)
    env = dict(
        os.environ if base_env is None else base_env,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        COLUMNS="100",
    )
    last_code, results = 0, []
    for command, expected in _split_console(block):
        if command == "echo $?":
            results.append((command, expected, str(last_code)))
            continue
        argv = command.split()
        if argv[0] != "jaxcheck":
            raise ValueError(
                f"README.md:{block.line}: only `jaxcheck ...` and `echo $?` commands are run; got {command!r}"
            )
        proc = subprocess.run(
            [sys.executable, "-m", "jaxcheck", *argv[1:]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        last_code = proc.returncode
        results.append((command, expected, proc.stdout))
    return results


# ----------------------------------------------------------------------------
# Tests.

_ALL = _blocks()


def test_first_lines_are_the_two_commands():
    lines = README.read_text().splitlines()
    assert tuple(lines[:2]) == FIRST_LINES


def test_makefile_has_the_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), (
            f"Makefile has no `{target}` target"
        )
    assert "jaxcheck demo" in makefile


def test_markers_are_used_correctly():
    for k, block in enumerate(_ALL):
        if block.marker == "output":
            assert block.lang == "text", (
                f"README.md:{block.line}: `<!-- output -->` must mark a ```text block"
            )
            assert k > 0 and _ALL[k - 1].lang == "python", (
                f"README.md:{block.line}: `<!-- output -->` must follow a python block"
            )
        if block.marker == "file":
            assert block.lang == "python" and block.filename.endswith(".py"), (
                f"README.md:{block.line}"
            )
    skipped = [b for b in _ALL if b.marker == "skip"]
    assert all(b.lang != "python" for b in skipped), "python examples are never skipped"


def test_readme_has_examples():
    assert len(python_examples(_ALL)) >= 8
    assert console_blocks(_ALL)


@pytest.mark.parametrize("example", python_examples(_ALL), ids=lambda e: e.id)
def test_python_example(example: Example):
    for block, output, stdout in run_example(example):
        if output is not None:
            problem = outputs_match(stdout, output.code)
            assert problem is None, (
                f"README.md:{output.line}: the output shown is not what the block at line {block.line} prints; {problem}"
            )


@pytest.mark.parametrize("block", console_blocks(_ALL), ids=lambda b: f"README.md:{b.line}")
def test_console_example(block: Block, tmp_path: Path, strict_env: dict):
    for command, expected, actual in run_console(block, file_blocks(_ALL), tmp_path, strict_env):
        problem = outputs_match(actual, expected)
        assert problem is None, f"README.md:{block.line}: `{command}`: {problem}"


def test_output_comparison_is_strict_about_words_and_lenient_about_noise():
    assert outputs_match("PASSED: x 1.30e-08 in 1.37 s\n", "PASSED:  x 2.1e-08 in 0.5 s") is None
    assert outputs_match("FAILED: x", "PASSED: x") is not None
    assert outputs_match("worst [3] 0.5000", "worst [3] 0.4000") is not None
    assert outputs_match("a\nb", "a") is not None


# ----------------------------------------------------------------------------
# Refreshing the outputs shown in README.md.


def update_readme() -> int:
    """Rewrites every output block (and console output) of README.md from a real run."""
    text = README.read_text()
    lines = text.splitlines()
    blocks = parse_blocks(text)
    replacements: list[
        tuple[int, int, str]
    ] = []  # (first content line, end fence line, new content)
    for example in python_examples(blocks):
        for block, output, stdout in run_example(example):
            if output is not None:
                replacements.append((output.line, output.end, stdout.rstrip("\n")))
    import tempfile

    for block in console_blocks(blocks):
        with tempfile.TemporaryDirectory() as tmp:
            content = []
            for command, _, actual in run_console(block, file_blocks(blocks), Path(tmp)):
                content.append(f"$ {command}")
                if actual.strip("\n"):
                    content.append(actual.rstrip("\n"))
        replacements.append((block.line, block.end, "\n".join(content)))
    for start, end, content in sorted(replacements, reverse=True):
        lines[start : end - 1] = content.splitlines()
    README.write_text("\n".join(lines) + "\n")
    print(f"updated {len(replacements)} output blocks in {README}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        sys.path.insert(0, str(ROOT))
        raise SystemExit(update_readme())
    raise SystemExit("usage: python3 tests/test_readme.py --update")
