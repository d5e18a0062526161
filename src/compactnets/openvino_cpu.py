"""OpenVINO on the CPU with static shapes: one model compiled per input shape seen, shared by the ONNX runner
(``eval``/``predict --runtime openvino``, ``bench --backend openvino``) and the distillation teacher of ``train``.

Static shapes run faster than a dynamic batch: OpenVINO ran ``micronet_m0_cifar`` at batch 1 in 2.2x the time with
the batch left dynamic (0.96 vs 0.44 ms, 1 thread, Xeon with AMX).
"""

from __future__ import annotations

import numpy as np


def failure_reason(error: Exception) -> str:
    """The line of an OpenVINO error that says what failed: its messages run over several lines, the first ones
    naming the C++ source of the check."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


class StaticShapeModel:
    """``model`` (an ``openvino.Model``) compiled for the CPU with ``config``, once per input shape.

    Args:
        core: the ``openvino.Core`` that compiles.
        model: the model, its shapes as converted (a dynamic batch is fine: each shape gets a reshaped clone).
        config: compile properties (threads, performance and precision hints).
    """

    def __init__(self, core, model, config: dict):
        self.core, self.model, self.config = core, model, config
        self.requests = {}

    def infer(self, array: np.ndarray) -> np.ndarray:
        """The first output for one C-contiguous input ``array`` (read in place; the output is a copy)."""
        request = self.requests.get(array.shape)
        if request is None:
            model = self.model.clone()
            model.reshape(list(array.shape))
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self.requests[array.shape] = request
        return request.infer({0: array}, share_inputs=True)[0]
