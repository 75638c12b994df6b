"""Learning-Compression pruning (Carreira-Perpinan and Idelbayev, CVPR 2018) and the iterative
magnitude pruning of Han, Pool, Tran and Dally (NIPS 2015), the training-based methods of the
registry (``--method lc``, ``--method magnitude-iterative``):

- ``compression``: the C steps in closed form, per layer or over one joint budget;
- ``algorithm``: the augmented-Lagrangian / quadratic-penalty loop around a caller's L step;
- ``schedule``: HPTD's rising sparsity per round and its mask step;
- ``trained``: what both methods share (data, budget, training settings, work folder, result);
- ``lc_method``, ``iterative``: the two methods on the shared training loop.
"""
