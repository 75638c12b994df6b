"""The `nettrim prune` flags of the training-based methods (``--method lc`` and
``--method magnitude-iterative``): each method declares which of them it takes; the defaults
are the methods' own (None here means "not given")."""

from __future__ import annotations

import click

from nettrim_cli.methods.lc.compression import Form

# (flag, parameter, click keyword arguments); every default is None: the method fills it in
TRAINING_FLAGS: list[tuple[str, str, dict]] = [
    ("--data", "data_path", dict(
        metavar="TRAIN", help="lc, magnitude-iterative: labelled training data (.h5 /inputs "
        "and /labels, or .npz inputs/labels).")),
    ("--allocation", "allocation", dict(
        metavar="per-layer|joint|uniform|discrepancy",  # checked by the method: one line
        help="lc, magnitude-iterative: the budget per layer (default) or one joint budget "
        "over all pruned layers. netrim with --sparsity: one eps for every layer (uniform) "
        "or per-layer eps that lower the network's output discrepancy (discrepancy; "
        "default: the preset's 'allocation', else discrepancy).")),
    ("--epochs", "epochs", dict(
        type=int, help="Training epochs per LC step / per round (default 1 / 2).")),
    ("--lr", "lr", dict(type=float, help="Learning rate of the first step (default 0.05).")),
    ("--lr-decay", "lr_decay", dict(
        type=float, help="The learning rate of step k is lr * decay^k (lc: 0.98, "
        "magnitude-iterative: 1).")),
    ("--optimizer", "optimizer", dict(
        type=click.Choice(["sgd", "adam"]),
        help="sgd (Nesterov momentum 0.9, default) or adam.")),
    ("--batch-size", "batch_size", dict(type=int, help="Minibatch size (default 128).")),
    ("--seed", "seed", dict(type=int, help="Seed; step k trains with seed + k (default 0).")),
    ("--scheduler", "scheduler", dict(
        metavar="NAME", help="A torch.optim.lr_scheduler class stepped after every epoch "
        "within a step, e.g. CosineAnnealingLR.")),
    ("--scheduler-args", "scheduler_args", dict(
        metavar="JSON", help="Its keyword arguments, e.g. '{\"T_max\": 2}'.")),
    ("--finetune-epochs", "finetune_epochs", dict(
        type=int, help="Masked fine-tuning epochs after the last step (default 0).")),
    ("--form", "form", dict(
        type=click.Choice([str(f) for f in Form]),
        help="lc: the compression (default l0-constraint: keep --sparsity / --match).")),
    ("--alpha", "alpha", dict(type=float, help="lc penalty forms: the penalty's weight.")),
    ("--radius", "radius", dict(
        type=float, help="lc l1-constraint: the l1 budget as a fraction of the dense "
        "weights' l1 norm, in (0, 1).")),
    ("--mu0", "mu0", dict(type=float, help="lc: mu of the first LC step (default 1e-3).")),
    ("--mu-growth", "mu_growth", dict(
        type=float, help="lc: mu_k = mu0 * growth^k (default 1.3).")),
    ("--steps", "steps", dict(type=int, help="lc: LC steps (default 20).")),
    ("--variant", "variant", dict(
        type=click.Choice(["augmented-lagrangian", "quadratic-penalty"]),
        help="lc: with multipliers (default) or the quadratic penalty alone.")),
    ("--rounds", "rounds", dict(
        type=int, help="magnitude-iterative: prune-and-retrain rounds (default 10).")),
    ("--ramp", "ramp", dict(
        type=click.Choice(["cubic", "linear"]),
        help="magnitude-iterative: sparsity per round on a cubic ramp (default) or in equal "
        "steps.")),
]


def training_options(fn):
    """Add the training-based methods' flags to a command."""
    for flag, param, kwargs in reversed(TRAINING_FLAGS):
        fn = click.option(flag, param, **kwargs)(fn)
    return fn
