"""Make autoseg treat this CPU as one without native bf16, to measure a float32 host's path on a bf16 one.

Python imports a ``sitecustomize`` module found on ``sys.path`` at start-up, so putting this folder on
``PYTHONPATH`` applies it to every process of a run (the CLI, the planner's probe, the data workers):

    PYTHONPATH=benchmarks/emulate_float32_cpu autoseg demo -o DIR

``mixed_precision: auto`` then resolves to float32 and ``channels_last: auto`` to channels-last for 3D,
as they do on a CPU without AVX512-BF16 or AMX-BF16 (autoseg/utils/device.py). Only the dtype path is
emulated: the host's float32 speed stays its own (docs/benchmarks.md, "autoseg demo, quiet and under load").
"""
import autoseg.utils.device

autoseg.utils.device.cpu_has_native_bf16 = lambda: False
