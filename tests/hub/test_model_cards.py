"""Every published checkpoint's model card says what issue "Checkpoints worth loading" asks, and agrees with the
manifest: a card that quotes an old metric (a re-published checkpoint whose README was not updated) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnzoo import hub

WEIGHTS = hub.embedded_dir()
RECORDS = hub.read_manifest(WEIGHTS)
SECTIONS = ("Data", "Recipe", "Metric", "Baseline", "Reproduce", "License")


def _section(card: str, title: str) -> str:
    """The text of a '## Title' section or of a '- **Title**:' bullet (the two card layouts in weights/)."""
    heading = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", card, re.S | re.M)
    bullet = re.search(rf"^- \*\*{title}\*\*:(.*?)(?=^- \*\*|^```|\Z)", card, re.S | re.M)
    match = heading or bullet
    return match.group(1).strip() if match else ""


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_card_has_every_section_and_the_published_metric(name):
    record = RECORDS[name]
    card_path = WEIGHTS / Path(record.file).parent / hub.CARD
    card = card_path.read_text()
    missing = [title for title in SECTIONS if not _section(card, title)]
    assert not missing, f"{card_path} lacks {missing}"
    metric = _section(card, "Metric")
    for key, value in record.metrics.items():
        assert f"{value:.2f}" in metric, f"{card_path}'s Metric does not quote {key} {value:.2f}: {metric!r}"
    assert f"attnzoo eval {name}" in card, f"{card_path} does not say how to re-measure it"
