"""Learning-Compression pruning (Carreira-Perpinan and Idelbayev, CVPR 2018) and the iterative
magnitude schedule of Han, Pool, Tran and Dally (NIPS 2015), as pure parts to be wired into the
method registry and the shared training loop (whose ``quadratic_penalty`` is the L step's term):

- ``compression``: the C steps in closed form, per layer or over one joint budget;
- ``algorithm``: the augmented-Lagrangian / quadratic-penalty loop around a caller's L step;
- ``schedule``: HPTD's rising sparsity per round and its mask step.
"""
