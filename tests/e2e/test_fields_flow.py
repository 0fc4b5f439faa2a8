"""Real browser, a project with two label fields: `f` moves to the next field of the item on
screen, the keys act on the field shown, the next item comes after the item's last field."""

from __future__ import annotations

import pytest

from tests.e2e.browser import CHROMIUM
from tests.e2e.test_label_flow import PHOTO_READY, current_item, page  # noqa: F401  (the signed-in page)
from tests.labeler.conftest import labeller  # noqa: F401  (the running-app fixture)
from tests.labeler.test_label_tab import human_labels

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at "
                                                  "/usr/bin/chromium (apt-get install chromium)")]


@pytest.fixture
def project(project):  # noqa: ANN001, ANN201 - the conftest project with a second field
    project.add_field("colour", ["dark", "light"])
    return project


def _field_shown(page, name: str) -> None:  # noqa: ANN001, F811
    page.wait_for_function(f"() => (document.querySelector('#why')?.innerText || '').includes('Field {name}')",
                           timeout=30_000)
    page.wait_for_function(PHOTO_READY, timeout=30_000)


def test_keys_act_on_the_field_shown(labeller, page) -> None:  # noqa: ANN001, F811
    item = current_item(page)
    _field_shown(page, "category")
    page.keyboard.press("f")  # to the colour, nothing recorded
    _field_shown(page, "colour")
    page.keyboard.press("f")  # and back: both are undecided
    _field_shown(page, "category")
    assert current_item(page) == item and human_labels(labeller.project) == []
    page.keyboard.press("Enter")  # accept the category's top suggestion: the colour follows
    _field_shown(page, "colour")
    assert current_item(page) == item
    page.keyboard.press("s")  # skip the colour: the item is done, the next one starts at its category
    page.wait_for_function(
        f"() => {{ const m = /item #(\\d+)/.exec(document.querySelector('#why')?.innerText || '');"
        f" return m && Number(m[1]) !== {item}; }}", timeout=30_000)
    _field_shown(page, "category")
    rows = human_labels(labeller.project)
    assert [(r.item_id, r.field, r.decision) for r in rows] == [(item, "category", "accepted"),
                                                                (item, "colour", "skipped")]
