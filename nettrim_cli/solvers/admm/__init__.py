"""Whole-layer ADMM for the constrained Net-Trim program (4) (parallel) and (6) (cascade).

The column QPs of eq. 14 (``osqp.py`` + ``search.py``) reach program (4) only through a search
over the regularisation lambda. This solver attacks (4)/(6) directly, all columns at once:

    min_W  sum_{j weight} |W_mj|   s.t.  Z = X_a W^T,  Z in C,

    C = { Z : ||Z_Omega - Y_Omega||_F <= eps,  Z_Omega^c <= V_Omega^c }       (relu, eq. 3)
    C = { Z : ||Z - Y||_F <= eps }                                             (none)

(Omega: the layer program's active set, ``program.active_set``, stored once -- the entries
with Y > 0 unless the graph gives another; one scalar eps for the layer; the bias column is
free.) With a fixed lambda instead of eps the indicator of the ball becomes
lambda ||Z_Omega - Y_Omega||^2, i.e. eq. 11 for every column at once.

One module per stage:

    settings.py  ADMMSettings, the ADMMSolution record, the column statuses
    iterate.py   the ADMM iteration (graph form, one factorisation per layer, rho balancing)
    polish.py    the active-set polish on ADMM's support and bound set, LP certificates
    repair.py    the Gram form (no activation); the support refit and the mixes that pull an
                 answer onto the constraint
    layer.py     solve_layer (the stages in order, the choice of the answer) and ADMMSolver
"""

from nettrim_cli.solvers.admm.layer import ADMMSolver, solve_layer
from nettrim_cli.solvers.admm.settings import (
    DEAD,
    GROWN,
    INACCURATE,
    MIXED,
    NOT_REACHED,
    SOLVED,
    ADMMSettings,
    ADMMSolution,
    ADMMStatus,
)

__all__ = ["DEAD", "GROWN", "INACCURATE", "MIXED", "NOT_REACHED", "SOLVED", "ADMMSettings",
           "ADMMSolution", "ADMMSolver", "ADMMStatus", "solve_layer"]
