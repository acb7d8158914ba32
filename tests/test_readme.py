"""The README's settings table comes from the settings table in common/settings.py."""

from pathlib import Path

from common.settings import SETTINGS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_setting_with_its_default():
    rows = {
        cells[1].strip("` "): cells[2].strip("` ")
        for line in README.read_text().split("## Settings")[1].split("\n## ")[0].splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 4
    }
    for name, spec in SETTINGS.items():
        assert name in rows, f"README lacks {name}"
        assert rows[name] == (spec.default or "unset"), name
