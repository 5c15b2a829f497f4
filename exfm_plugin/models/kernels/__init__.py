"""Kernels of the model zoo: the fused and in-place layers (grouped per-head layers, masked
attention, embedding-bag field pooling) and the sparse/exact optimizers that the models in
:mod:`exfm_plugin.models` build on. None of them is a model; they live apart so the zoo's
directory lists models, and each kernel is tested against its dense reference
(``tests/models/test_grouped_layers.py``, ``test_masked_attention.py``, ``test_sparse_embedding.py``,
``test_exact_adam.py``)."""
