"""experiments/ft_recovery.py: docs/finetune-recovery.md is written from the tuned start's
summaries and the recipes' results, each against dense."""

import json

from experiments import ft_recovery, hs_nets


def test_the_doc_puts_each_recipe_beside_the_default_and_the_baselines(tmp_path, monkeypatch):
    monkeypatch.setattr(hs_nets, "EXP", tmp_path)
    monkeypatch.setattr(ft_recovery, "DOC", tmp_path / "doc.md")
    d = hs_nets.seed_dir(1, "tuned") / "cnn60k"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"accuracy_original": 91.0, "levels": {"0.95": {
        "accuracy": {"lc": 87.5},
        "allocation": {"ft_accuracy": {"netrim": 89.5, "magnitude": 90.25, "wanda": 89.0}}}}}))
    (d / ft_recovery.RESULTS).write_text(json.dumps({"30 epochs": 89.75, "Adam, lr 3e-3": 88.5}))
    ft_recovery.write_doc()
    text = (tmp_path / "doc.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| CNN-60K"))
    assert row == ("| CNN-60K | 1 | 91.00 | 89.50 (-1.50) | 89.75 (-1.25) | - | 88.50 (-2.50) | "
                   "90.25 (-0.75) magnitude | 87.50 (-3.50) |")
    assert "LeNet-5" not in text  # no results, no row
