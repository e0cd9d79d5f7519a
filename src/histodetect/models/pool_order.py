"""Where the ReLU next to a max-pool runs: after the pool in eager models, before it in graphs.

histocnn and seed_cnn run each block's last ReLU after its max-pool: max(relu(a), relu(b)) =
relu(max(a, b)) exactly (ReLU is monotone), with the same gradients, so the network is the
textbook conv-ReLU-pool one while the ReLU and its backward pass touch a quarter of the values
(7-10% faster training steps on CPU; docs/BENCHMARKS.md, issue 10). Graph builders want the
textbook order back: oneDNN's fused CPU graph (`inference.backends.torch.fused_cpu_graph`) fuses
conv + BN + ReLU and cannot add a ReLU after a pool, and ONNX Runtime's int8 quantiser
mishandles MaxPool -> Relu (probabilities off by up to 0.99), so both build from
`relu_before_pool(model)`.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn


def relu_before_pool(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every MaxPool2d -> ReLU pair of a Sequential put back as
    ReLU -> MaxPool2d (the same function; parameter names unchanged)."""
    textbook = copy.deepcopy(model)
    for block in textbook.modules():
        if not isinstance(block, nn.Sequential):
            continue
        names = list(block._modules)
        for first, second in itertools.pairwise(names):
            pool, relu = block._modules[first], block._modules[second]
            if isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU):
                block._modules[first], block._modules[second] = relu, pool
    return textbook
