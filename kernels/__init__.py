"""fitsketch.kernels: the batched numeric kernels, each with a Triton kernel (CUDA), a PyTorch
path (CPU default, also GPU) and a NumPy reference (the definition).

* ``minhash``     MinHash signatures of many sets (CSR), estimators, merge by min.
* ``jslsh``       JS-LSH projections ``ceil((a . sqrt(P) + b) / r)`` and band keys.
* ``recon_error`` per-sample reconstruction loss through a fleet of stacked autoencoders.
* ``hamming``     Hamming distances and exact k-NN between packed binary codes.

Every public function takes ``device="auto" | "cpu" | "cuda"`` (see ``_device``). Modules are
imported on use: ``from fitsketch.kernels import minhash``. This package never imports the
engine (``fitsketch``) or ``fitsketch.storage``.
"""
from ._device import DeviceError, resolve_device

__all__ = ["DeviceError", "resolve_device"]
