"""experiments/conv_results.py: the "Whole conv networks" section of docs/results.md is
written from the files `make conv-experiments` leaves, and its verdict on issue 14's figures
(LeNet-5: >= 60% of all params pruned, <= 1 point lost, <= 60 s; small ResNet: every conv
pruned, <= 2 points lost) follows the measured numbers."""

import json

import pytest

from experiments.conv_results import END, START, section, write_section


def _report(zero_fraction, conv_sparsity=(0.14, 0.41)):
    convs = [{"name": str(i), "kind": "conv", "activation": "relu", "program": "eq. 3",
              "shape": [6, 25], "sparsity": s, "nonzeros_after": 10, "rows": 200,
              "rows_total": 9000, "relative_discrepancy": 0.02, "discrepancy_all": 1.0,
              "output_norm_all": 50.0, "flops_dense": 1000, "flops_pruned": 800}
             for i, s in enumerate(conv_sparsity)]
    fc = {"name": "fc", "kind": "linear", "activation": "none", "program": "least squares",
          "shape": [10, 84], "sparsity": 0.5, "nonzeros_after": 420,
          "relative_discrepancy": 0.02, "flops_dense": 840, "flops_pruned": 420}
    return {"settings": {"sparsity_search": {"epsilon": 0.0218, "trials": [
                {"epsilon": 0.05, "pruned": 0.84, "seconds": 12.0},
                {"epsilon": 0.0218, "pruned": 0.653, "seconds": 11.0}]}},
            "layers": [*convs, fc],
            "network": {"pruned_fraction": zero_fraction + 0.002, "flops_dense": 416520,
                        "flops_pruned": 263497,
                        "model": {"params": 61706, "zero_fraction": zero_fraction,
                                  "pruned_layers": ["0", "1", "fc"], "kept_layers": []}}}


def _write(tmp_path, name, level, acc, seconds, zero_fraction, **kw):
    d = tmp_path / name
    d.mkdir()
    (d / f"netrim-{level}.json").write_text(json.dumps(_report(zero_fraction, **kw)))
    (d / "summary.json").write_text(json.dumps({
        "n_train": 30000, "epochs": 5, "calib": 5000, "ft_epochs": 2, "train_seconds": 1.0,
        "dump_seconds": 2.0, "accuracy_original": 84.36,
        "levels": {level: {"accuracy": {"netrim": acc, "magnitude": 80.0},
                           "ft_accuracy": {"netrim": 85.3},
                           "seconds": {"netrim": seconds, "netrim_cpu": 50.0,
                                       "netrim_load": [1.5, 2.0]}}}}))


def test_lenet_meeting_the_figure(tmp_path):
    _write(tmp_path, "lenet5", "0.65", 84.02, 59.0, 0.651)
    text = section(tmp_path)
    assert "| LeNet-5 | 61706 | 0.65 | 0.0218 (2) | 65.3% / 65.1% | 84.36 -> 84.02 (-0.34)" \
        in text
    assert "--sparsity 0.65: 0.34 points lost, 65.1% of all params zero: meets" in text
    assert "eps 0.05 -> 84.0% (12 s), eps 0.0218 -> 65.3% (11 s)" in text
    assert "| magnitude (HPTD) | 80.00 | not run |" in text


@pytest.mark.parametrize("acc, seconds, zero, why", [
    (84.02, 456.3, 0.651, "prune 456.3 s > 60 s at load 1.5"),
    (83.0, 59.0, 0.651, "1.36 points lost > 1"),
    (84.02, 59.0, 0.55, "55.0% of all params pruned < 60.0%"),
])
def test_lenet_missing_the_figure_says_why(tmp_path, acc, seconds, zero, why):
    _write(tmp_path, "lenet5", "0.65", acc, seconds, zero)
    assert f"misses issue 14's figure ({why})" in section(tmp_path)


def test_resnet_needs_every_conv_pruned(tmp_path):
    _write(tmp_path, "resnet", "0.1", 83.37, 500.0, 0.1, conv_sparsity=(0.2, 0.0))
    text = section(tmp_path)
    assert "0.99 points lost" in text and "a conv layer is not pruned" in text


def test_write_section_keeps_the_rest(tmp_path):
    _write(tmp_path, "resnet", "0.1", 80.0, 500.0, 0.1)
    results = tmp_path / "results.md"
    results.write_text(f"# head\n\n{START}\nold\n{END}\n\n## tail\n")
    write_section(tmp_path, results)
    text = results.read_text()
    assert text.startswith("# head\n") and text.rstrip().endswith("## tail")
    assert "old" not in text and "### small ResNet" in text


def test_unfinished_network_says_what_is_missing(tmp_path):
    d = tmp_path / "cnn30k"
    (d / "netrim-0.8.pt.nettrim-work" / "trial-00").mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "n_train": 30000, "epochs": 8, "train_seconds": 150.0, "accuracy_original": 89.1}))
    text = section(tmp_path)
    assert "Not run yet: LeNet-5, small ResNet, CNN-10K, CNN-60K" in text
    assert "no --sparsity level finished yet; stopped searches at --sparsity 0.8 (1 trials " \
        "begun)" in text
