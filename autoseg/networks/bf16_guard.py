"""Try a bf16 CPU training step in a child process before trusting it in the training loop.

oneDNN 3.12's AMX bf16 kernels (torch 2.13) corrupt the heap in the weight gradient of some 3D
convolutions: on a Xeon with AMX, 32->32 channels with a 1x3x3, 3x3x1 or 1x1x1 kernel on a 1x80x64 or
2x80x64 input (Dataset027_ACDC's 3d_fullres plan) abort or segfault in ``loss.backward()``, 3x3x3 on
2x160x128 too, while 16 or 64 channels, 2x64x64, float32, or oneDNN capped below AMX run (the shapes
are a kernel-selection matter, not a rule the planner could avoid; docs/troubleshooting.md). A crash
there kills the trainer, a corrupted heap may hang it instead; so the plan's network (with its aux heads,
and Vox2Vox's discriminator) takes two bf16 steps at the training patch and batch in a child process
first, and training falls back to float32 when the child does not finish cleanly. A child that runs out
of memory is no bf16 crash (float32 would need more): that is raised as a MemoryError.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any, Sequence

import torch

from autoseg.errors import is_out_of_memory, memory_error_line

# Two steps: the first backward of the crashing shapes already dies; the second catches a corruption
# that only shows when the allocator reuses the damaged block.
PROBE_STEPS = 2
# Seconds the child may take (torch import, network build, two steps) before it counts as hung.
PROBE_TIMEOUT_SECONDS = 180.0
# The child's exit code when its steps ran out of memory (ENOMEM's number); SIGKILL, the kernel's
# out-of-memory killer's signal, says the same (a oneDNN crash aborts or segfaults).
OUT_OF_MEMORY_EXIT_CODE = 12


def probe_command() -> list[str]:
    return [sys.executable, "-m", "autoseg.networks.bf16_guard"]


def step_spec(network: str, topology: dict[str, Any], in_channels: int, n_outputs: int, options: dict[str, Any],
              patch: Sequence[int], batch: int) -> dict[str, Any]:
    """What the child builds and steps: the network as the trainer builds it (its topology carries the
    patch), at the training patch and batch, on this process's math threads."""
    topology = {**topology, "extra": {**topology.get("extra", {}), "patch_size": list(patch)}}
    return dict(network=network, topology=topology, in_channels=in_channels, n_outputs=n_outputs, options=options,
                patch=list(patch), batch=batch, threads=torch.get_num_threads())


def bf16_step_survives(spec: dict[str, Any], command: Sequence[str] | None = None,
                       timeout: float = PROBE_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(True, "") when the child finished ``spec``'s bf16 steps; else (False, what happened). Raises
    MemoryError when the child ran out of memory: an allocation failure was taken for a oneDNN crash,
    and training fell back to float32, which needs more memory still."""
    try:
        done = subprocess.run(list(command or probe_command()), input=json.dumps(spec), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"a bf16 step had not finished after {timeout:.0f} s"
    if done.returncode == 0:
        return True, ""
    why = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
    last = (done.stderr.strip().splitlines() or [""])[-1]
    out_of_memory = {OUT_OF_MEMORY_EXIT_CODE: last, -signal.SIGKILL: "killed by SIGKILL, most often the out-of-memory killer"}
    if done.returncode in out_of_memory:
        raise MemoryError(f"a bf16 training step of {spec['network']} at patch {spec['patch']}, batch {spec['batch']} "
                          f"in a child process: {out_of_memory[done.returncode]}")
    return False, f"a bf16 step crashed ({why}{': ' + last if last else ''})"


def probe_modules(spec: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The network as the trainer builds it, in training mode, and its discriminator for an adversarial
    family (Vox2Vox's trains under the same autocast), else None."""
    from autoseg.networks.registry import create_network, get_network_spec

    network = create_network(spec["network"], spec["topology"], spec["in_channels"], spec["n_outputs"],
                             **spec["options"]).train()
    adversary = get_network_spec(spec["network"]).adversary
    return network, (adversary.discriminator(spec["in_channels"], spec["n_outputs"]).train() if adversary else None)


def _trained_outputs(network: torch.nn.Module, discriminator: torch.nn.Module | None,
                     data: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor a training step differentiates: the logits, the aux outputs of ``forward_with_aux``
    (ConResNet's residual heads, the VAE) and the discriminator's scores. ``network(data)`` alone left
    those layers, and their bf16 weight gradients, out of the probe."""
    forward_with_aux = getattr(network, "forward_with_aux", None)
    outputs, aux = forward_with_aux(data) if forward_with_aux else (network(data), {})
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    scores = [discriminator(data, torch.softmax(outputs[0], dim=1))] if discriminator is not None else []
    return [*outputs, *aux.values(), *scores]


def bf16_steps(network: torch.nn.Module, discriminator: torch.nn.Module | None, data: torch.Tensor,
               steps: int = PROBE_STEPS) -> None:
    """``steps`` bf16 forward and backward passes through everything a training step runs."""
    for _ in range(steps):
        for module in (network, discriminator):
            if module is not None:
                module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = _trained_outputs(network, discriminator, data)
        sum(o.float().square().mean() for o in outputs).backward()


def _run_probe(spec: dict[str, Any]) -> None:
    """The child: build the network as the trainer does and take ``PROBE_STEPS`` bf16 steps."""
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    network, discriminator = probe_modules(spec)
    bf16_steps(network, discriminator, torch.randn(int(spec["batch"]), spec["in_channels"], *spec["patch"]))


def main() -> None:
    """The child's entry point: the spec from stdin; out of memory exits with ``OUT_OF_MEMORY_EXIT_CODE``
    after printing the error's first line, which the parent reports."""
    try:
        _run_probe(json.loads(sys.stdin.read()))
    except Exception as exc:  # noqa: BLE001 - only memory running out is told apart
        if not is_out_of_memory(exc):
            raise
        print(memory_error_line(exc) or type(exc).__name__, file=sys.stderr)
        sys.exit(OUT_OF_MEMORY_EXIT_CODE)


if __name__ == "__main__":
    main()
