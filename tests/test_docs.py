"""The documentation: every relative link resolves, the configuration reference is the schema's,
and README.md stays a five-minute read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distmis.config import load_schema
from distmis.config_reference import REGENERATE, render

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


def doc_files() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "benchmarks" / "README.md",
    ]


FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), with an optional "title"; targets hold no spaces here.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).+?\1")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than
    hyphens and underscores removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeats get -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """Relative links and anchors of ``path`` that lead nowhere, as 'file: target (why)'."""
    problems = []
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto: not fetched
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {target}"
            if not linked.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and linked.is_dir():
                problems.append(f"{where} (an anchor into a folder)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading: with (punctuation)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Title\n\n"
        "[ok](other.md#a-code-heading-with-punctuation) [ok](#title-1) [ext](https://x.invalid/)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [bad here](#title-2)\n"
        "`[not a link](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        f"{page}: missing.md (no such file)",
        f"{page}: other.md#nope (no heading with anchor #nope)",
        f"{page}: #title-2 (no heading with anchor #title-2)",
    ]


def test_github_slug_follows_githubs_rules():
    assert github_slug("Ray Train's report rate (`benchmarks/epoch_report.py`)") == (
        "ray-trains-report-rate-benchmarksepoch_reportpy"
    )
    assert github_slug("preflight/{backend}.json (rule preflight)") == (
        "preflightbackendjson-rule-preflight"
    )
    assert github_slug("GPU set-up: one env per backend") == "gpu-set-up-one-env-per-backend"


def test_configuration_reference_is_rendered_from_the_schema():
    page = ROOT / "docs" / "reference" / "configuration.md"
    expected = render(load_schema())
    assert page.exists() and page.read_text() == expected, (
        f"docs/reference/configuration.md is not the schema's rendering; regenerate it: {REGENERATE}"
    )


def schema_keys(schema: dict, prefix: str = ""):
    """(dotted path, subschema) of every key under ``schema``, objects of lists as ``name[]``."""
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}.{key}" if prefix else key
        yield name, sub
        yield from schema_keys(sub, name)
        if isinstance(sub.get("items"), dict):
            yield from schema_keys(sub["items"], f"{name}[]")


def test_configuration_reference_lists_every_key_with_its_default():
    schema = load_schema()
    text = render(schema)
    for name, sub in schema_keys(schema):
        if "." not in name:
            assert f"\n## {name}\n" in text
            continue
        entry = text.split(f"### `{name}`\n\n", 1)[1].split("\n### ", 1)[0]
        if "default" in sub:
            assert f"- Default: `{json.dumps(sub['default'], ensure_ascii=False)}`" in entry
        if "description" in sub:
            assert sub["description"].split()[0] in entry
    grace = "### `train.asha.grace_period`\n\n- Type: integer\n- Default: `1`\n- Allowed: ≥ 1\n"
    assert grace in text
    assert '### `data.preprocess.shards.train`\n\n- Type: integer (≥ 1) or `"auto"`\n' in text
    assert '- Type: object mapping any key to number (> 0)\n- Default: `{"torch": 0.0717}`' in text


def test_render_refuses_a_constraint_it_cannot_show():
    schema = {"properties": {"train": {"properties": {"x": {"type": "integer", "multipleOf": 2}}}}}
    with pytest.raises(ValueError, match=r"train\.x: keyword\(s\) multipleOf"):
        render(schema)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move detail into docs/"
    )
