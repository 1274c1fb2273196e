"""docs/case-reference.md is generated from the config schema and cannot drift from it."""
import dataclasses

import pytest

from hybridnde.classifier import CLASSIFIER_SECTIONS
from hybridnde.config import SECTIONS, SYSTEM_CONFIGS, field_docs
from hybridnde.config.reference import DEFAULT_PATH, main, render_case_reference


def test_committed_reference_equals_a_fresh_rendering():
    assert DEFAULT_PATH.is_file(), "docs/case-reference.md is missing"
    if DEFAULT_PATH.read_text() != render_case_reference():
        pytest.fail("docs/case-reference.md is stale: the config schema changed. Regenerate it with\n"
                    "    python -m hybridnde.config.reference --write\nand commit the result.")


def test_every_section_key_default_and_doc_is_rendered():
    text = render_case_reference()
    tables = {**{f"## [{n}]": c for n, c in SECTIONS.items()},
              **{f"### system: {n}": c for n, c in SYSTEM_CONFIGS.items()},
              **{f"### classifier: [{n}]": c for n, c in CLASSIFIER_SECTIONS.items() if n != "case"}}
    for heading, cls in tables.items():
        name = heading.lstrip("# ")
        assert heading in text, heading
        section = text.split(heading, 1)[1].split("\n#", 1)[0]
        for key, _, default, doc, constraints in field_docs(cls):
            if key == "name" and name.startswith("system"):
                continue
            row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
            assert row is not None, f"{name}.{key} missing"
            assert doc.replace("|", "\\|") in row
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert f"`{default!r}`" in row, (name, key, row)
            if constraints.get("choices"):
                assert "one of" in row
            if constraints.get("positive"):
                assert "> 0" in row
    # one row per field: nothing extra, nothing lost
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    expected = sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    expected += sum(len(dataclasses.fields(c)) - 1 for c in SYSTEM_CONFIGS.values())
    expected += sum(len(dataclasses.fields(c)) for name, c in CLASSIFIER_SECTIONS.items() if name != "case")
    assert len(rows) == expected


def test_write_and_check(tmp_path, capsys):
    path = tmp_path / "reference.md"
    assert main(["--check", str(path)]) == 1  # missing counts as stale
    assert main(["--write", str(path)]) == 0
    assert path.read_text() == render_case_reference()
    assert main(["--check", str(path)]) == 0
    path.write_text(path.read_text().replace("valid prediction time", "VPT"))
    assert main(["--check", str(path)]) == 1
    assert "--write" in capsys.readouterr().err
