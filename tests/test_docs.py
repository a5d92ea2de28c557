"""The documents in docs/ say what the code does, and what they cite exists.

No server is needed: the docs are read as text and compared with the code's own tables
(gateway/signing.py, gateway/outcomes.py, gateway/settings.py). A doc and code that disagree
fail here, not in an integrator's hands.
"""

import re
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from gateway.outcomes import OUTCOMES
from gateway.settings import Settings
from gateway.signing import sign_body

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL_DOC = DOCS / "protocol.md"
OPERATIONS_DOC = DOCS / "operations.md"
CITING_SUFFIXES = (".py", ".md", ".lua")
# Not the project's own text: version control, virtual environments, build and tool caches.
SKIPPED_FOLDERS = {
    ".git",
    ".venv",
    "venv",
    "env",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    ".wallet-gateway",
    "bench-report",
    "build",
    "dist",
}

# `docs/protocol.md §5`: a document of docs/ and one of its numbered sections.
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+?)\.md §(\d+)")
# The team's notes outside the repository, by their upper-case names: a clone has neither.
TEAM_NOTE = re.compile(r"\b(?:PROTOCOL|DESIGN)\.md\b")
NUMBERED_SECTION = re.compile(r"^## (\d+)\.", re.MULTILINE)
# A table row of three backticked cells: secret | body | signature (docs/protocol.md §2).
SIGNATURE_VECTOR = re.compile(r"^\s*\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|\s*$")
# A row of the error codes table: | `OUTCOME` | status | message | when |
ERROR_CODE_ROW = re.compile(r"^\|\s*`([A-Z_]+)`\s*\|\s*(\d{3})\s*\|([^|]*)\|", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def project_files(suffixes: tuple[str, ...]) -> list[Path]:
    """The repository's own files with these suffixes, outside SKIPPED_FOLDERS, egg-info and
    any folder holding a virtual environment."""
    found: list[Path] = []
    pending = [ROOT]
    while pending:
        folder = pending.pop()
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                skipped = (
                    path.name in SKIPPED_FOLDERS
                    or path.name.endswith(".egg-info")
                    or (path / "pyvenv.cfg").exists()
                )
                if not skipped:
                    pending.append(path)
            elif path.suffix in suffixes:
                found.append(path)
    return found


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def sections(doc: Path) -> set[int]:
    return {int(number) for number in NUMBERED_SECTION.findall(doc.read_text())}


def signature_vectors() -> list[tuple[str, str, str]]:
    return [
        match.groups()
        for line in PROTOCOL_DOC.read_text().splitlines()
        if (match := SIGNATURE_VECTOR.match(line))
    ]


def documented_error_codes() -> dict[str, tuple[int, str]]:
    return {
        name: (int(status), message.strip())
        for name, status, message in ERROR_CODE_ROW.findall(PROTOCOL_DOC.read_text())
    }


def without_code(markdown: str) -> str:
    """The text of a markdown file outside fenced blocks and inline code, where a link is a
    link."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", markdown))


# --- a: the signature test vectors -------------------------------------------------------------


def test_the_protocol_doc_holds_the_signature_test_vectors() -> None:
    vectors = signature_vectors()
    assert len(vectors) >= 2, "docs/protocol.md §2 lists no secret | body | signature rows"
    assert any(not secret.isascii() for secret, _, _ in vectors), "no non-ASCII secret vector"


# No vector found: one that cannot verify, so the test fails rather than being skipped.
@pytest.mark.parametrize(
    "secret, body, signature", signature_vectors() or [("", "", "no vector in the doc")]
)
def test_each_signature_vector_of_the_protocol_doc_verifies_with_our_signing_code(
    secret: str, body: str, signature: str
) -> None:
    raw = body.encode("utf-8")
    assert sign_body(secret, raw) == signature
    assert sign_body(secret, raw + b" ") != signature  # the exact bytes, nothing canonicalised


# --- b: every error code with its status -------------------------------------------------------


def test_every_error_code_appears_in_the_protocol_doc_with_its_status_and_message() -> None:
    documented = documented_error_codes()
    missing = sorted(set(OUTCOMES) - set(documented))
    assert not missing, f"outcomes missing from the error codes table: {missing}"
    wrong = {
        name: {"code": OUTCOMES[name], "doc": documented[name]}
        for name in OUTCOMES
        if documented[name] != OUTCOMES[name]
    }
    assert not wrong, wrong


def test_the_protocol_doc_lists_no_error_code_the_code_does_not_have() -> None:
    unknown = sorted(set(documented_error_codes()) - set(OUTCOMES))
    assert not unknown, unknown


# --- c: every setting in the operations doc ----------------------------------------------------


@pytest.mark.parametrize("setting", fields(Settings), ids=lambda setting: setting.name)
def test_every_setting_appears_in_the_operations_doc_with_its_env_var_and_flag(
    setting: Field[Any],
) -> None:
    text = OPERATIONS_DOC.read_text()
    env = setting.metadata["env"]
    flag = "--" + setting.name.replace("_", "-")
    assert f"`{env}`" in text, f"{env} is not in docs/operations.md"
    assert f"`{flag}`" in text, f"{flag} is not in docs/operations.md"


# --- d: citations name a document and a section that exist -------------------------------------


def test_every_citation_of_a_doc_section_names_one_that_exists() -> None:
    broken: list[str] = []
    for path in project_files(CITING_SUFFIXES):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name, section in CITATION.findall(line):
                doc = DOCS / f"{name}.md"
                where = f"{relative(path)}:{number}: docs/{name}.md §{section}"
                if not doc.is_file():
                    broken.append(f"{where}: no such document")
                elif int(section) not in sections(doc):
                    broken.append(f"{where}: no section '## {section}.'")
    assert not broken, "\n".join(broken)


def test_the_protocol_doc_keeps_the_numbered_sections_code_cites() -> None:
    assert set(range(1, 9)) <= sections(PROTOCOL_DOC)


# --- e: nothing cites the team's notes, which a clone does not carry ---------------------------


def test_no_file_cites_the_team_notes_a_clone_does_not_carry() -> None:
    citing = [
        f"{relative(path)}:{number}: {line.strip()[:120]}"
        for path in project_files(CITING_SUFFIXES)
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if TEAM_NOTE.search(line)
    ]
    assert not citing, f"{len(citing)} lines cite notes outside the repository:\n" + "\n".join(
        citing
    )


# --- f: relative links point at files that exist -----------------------------------------------


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_docs_exist() -> None:
    for name in ("protocol", "design", "operations", "performance"):
        assert (DOCS / f"{name}.md").is_file(), name


@pytest.mark.parametrize("doc", markdown_files(), ids=relative)
def test_every_relative_link_of_a_markdown_file_points_to_a_file_that_exists(doc: Path) -> None:
    broken = []
    for target in MARKDOWN_LINK.findall(without_code(doc.read_text())):
        if URL_SCHEME.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{relative(doc)} links to missing files: {broken}"
