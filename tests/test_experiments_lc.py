"""docs/results.md keeps its LC section when `make experiments` rewrites the rest, and
`make experiments-lc` replaces only that section."""

from __future__ import annotations

from experiments.lc_results import BEGIN, END, carry, insert


def test_the_lc_section_goes_before_the_figures_and_is_replaced_in_place():
    doc = "# R\n\n## Table\nrows\n\n## Figures\nfig\n"
    block = f"{BEGIN}\n## LC\nold\n{END}"
    first = insert(doc, block)
    assert first.index("## Table") < first.index("## LC") < first.index("## Figures")
    second = insert(first, f"{BEGIN}\n## LC\nnew\n{END}")
    assert "old" not in second and "new" in second
    assert second.replace("new", "old") == first


def test_a_rewrite_of_the_other_sections_keeps_the_lc_section():
    old = insert("# R\n\n## Figures\nfig\n", f"{BEGIN}\n## LC\nfigures\n{END}")
    rewritten = carry(old, "# R2\n\n## Table\nnew rows\n\n## Figures\nfig\n")
    assert "## LC\nfigures" in rewritten and "new rows" in rewritten
    assert carry("# no section\n", "# R2\n") == "# R2\n"
