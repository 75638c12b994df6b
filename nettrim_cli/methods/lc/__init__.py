"""Learning-Compression pruning (Carreira-Perpinan and Idelbayev, CVPR 2018) and the iterative
magnitude schedule of Han, Pool, Tran and Dally (NIPS 2015), as pure parts to be wired into the
method registry and the shared training loop:

- ``compression``: the C steps in closed form, per layer or over one joint budget;
- ``algorithm``: the augmented-Lagrangian / quadratic-penalty loop around a caller's L step;
- ``penalty``: the L step's term (mu/2) ||w - targets||^2 as a training-loop penalty hook;
- ``schedule``: HPTD's rising sparsity per round and its mask step.
"""
