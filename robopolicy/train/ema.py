"""The exponential moving average of the weights that Diffusion Policy evaluates and deploys.

diffusers' EMAModel, with its decay schedule (1 - (1 + step)^-power, warm-up, capped), `store`/`restore`/
`copy_to` and state, and a faster `step`.
"""

from collections.abc import Iterable

import torch
from diffusers.training_utils import EMAModel


class EMA(EMAModel):
    """EMAModel whose step updates the shadow weights in place, in one pass: shadow += (1 - decay)·(w - shadow).

    EMAModel's foreach step first computes (shadow - w) into a new list of tensors. For the paper U-Net that
    allocates and first-touches 254 MB per step: 119 ms on the 2-core benchmark machine, against 15 ms for
    the in-place lerp here (about 5% of a batch-256 training step).
    """

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        parameters = list(parameters)
        if len(parameters) != len(self.shadow_params):
            raise ValueError(f"EMA tracks {len(self.shadow_params)} tensors, step got {len(parameters)}")
        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        self.cur_decay_value = decay
        trained = [(s, p) for s, p in zip(self.shadow_params, parameters) if p.requires_grad]
        frozen = [(s, p) for s, p in zip(self.shadow_params, parameters) if not p.requires_grad]
        if frozen:  # as EMAModel: weights that do not train are copied
            torch._foreach_copy_([s for s, _ in frozen], [p for _, p in frozen])
        if trained:
            torch._foreach_lerp_([s for s, _ in trained], [p for _, p in trained], 1 - decay)
