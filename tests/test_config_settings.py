"""Every key of default_config.yaml does something: one check per key that fails if it stopped doing it.

A check sets the key away from its default and looks at the object that uses it (optimizer, loss,
trainer, batch stream, augmentation pipeline) for the change. ``test_every_setting_has_a_check`` keeps
the list complete: a new key without a check, or a check for a deleted key, fails it.
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoseg.dataset.description import load_description
from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec, list_networks
from autoseg.planning.plans import load_plans, plans_path
from autoseg.preprocessing.store import list_cases
from autoseg.training.augmentation import resolve_augmentation, training_transforms
from autoseg.training.config import flatten, load_defaults, resolve_config
from autoseg.training.data_loading import TRAIN_STREAM, VAL_STREAM, BatchSource, BatchStream, batch_to_device
from autoseg.training.math_threads import ThreadChoice, choose_math_threads
from autoseg.training.steps import AdversarialStep, LabelSpec, segmentation_loss
from autoseg.training.model_setup import build_optimizer
from autoseg.training.monitor import WARMUP_ITERATIONS
from autoseg.training.pseudo_validation import PseudoValidationResult, pseudo_validate
from autoseg.training.replanning import deadline
from autoseg.training.schedule import learning_rate
from autoseg.training.trainer import FoldRun, Trainer

from training_helpers import DATASET, PATCH, data_roots  # noqa: F401 - fixture

_counter = itertools.count()


@pytest.fixture(scope="module")
def make(data_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Trainer]:
    """``make(overrides, network=..., **FoldRun fields) -> Trainer`` on the tiny Hippocampus store."""
    preprocessed = data_roots["preprocessed"] / DATASET
    plans = load_plans(plans_path(preprocessed))
    store = preprocessed / plans["configurations"]["3d_fullres"]["data_identifier"]
    cases = list_cases(store)
    description = load_description(data_roots["raw"] / DATASET)
    scratch = tmp_path_factory.mktemp("settings")

    def build(overrides: list[str] = (), network: str = "unet", plan_changes: dict | None = None, **fields: Any) -> Trainer:
        run_plans = copy.deepcopy(plans)
        run_plans["configurations"]["3d_fullres"].update(plan_changes or {})
        config = resolve_config(network, ["mixed_precision=off", "num_workers=0", *overrides])
        run = FoldRun(
            dataset_name=DATASET, preprocessed_dir=preprocessed, store=store, plans=run_plans, plans_name="autosegPlans",
            configuration_name="3d_fullres", description=description, network_name=network, fold="all",
            model_folder=scratch / f"m{next(_counter)}", train_cases=cases, val_cases=cases[:2], config=config,
            device=torch.device("cpu"), **fields,
        )
        return Trainer(run)

    return build


def _config(*overrides: str) -> dict[str, Any]:
    return resolve_config("unet", list(overrides))


# ----------------------------------------------------------------------------------- schedule


def _num_epochs(make) -> None:
    assert make(["num_epochs=3", "use_plan_schedule=false"]).state.total_iterations == 3 * 2  # plan: 2 per epoch


def _use_plan_schedule(make) -> None:
    plan = {"num_iterations": 7}
    assert make(["num_epochs=3"], plan_changes=plan).state.total_iterations == 7
    assert make(["num_epochs=3", "use_plan_schedule=false"], plan_changes=plan).state.total_iterations == 6


def _iterations_per_epoch(make) -> None:
    assert make().iterations_per_epoch == 2
    trainer = make(["iterations_per_epoch=5", "num_epochs=3", "use_plan_schedule=false"])
    assert (trainer.iterations_per_epoch, trainer.state.total_iterations) == (5, 15)


def _val_iterations_per_epoch(make) -> None:
    trainer = make(["val_iterations_per_epoch=3"])
    source = BatchSourceCounter(trainer)
    pseudo_validate(trainer.setup, trainer.step.loss, trainer.labels, source, 3, trainer.device, trainer.context)
    assert source.drawn == 3


class BatchSourceCounter:
    """A validation stream that counts the batches drawn from it."""

    def __init__(self, trainer: Trainer) -> None:
        from autoseg.training.data_loading import VAL_STREAM, BatchSource

        self.source, self.drawn = BatchSource(trainer.val_spec, 0, VAL_STREAM), 0

    def __next__(self) -> dict[str, np.ndarray]:
        self.drawn += 1
        return self.source(self.drawn)


def _batch_size(make) -> None:
    assert make().train_spec.batch_size == 2  # the plan's
    trainer = make(["batch_size=3"])
    assert trainer.train_spec.batch_size == trainer.val_spec.batch_size == 3


def _patch_size(make) -> None:
    trainer = make(["patch_size=[16,16,32]"])
    assert trainer.patch_size == trainer.train_spec.patch_size == trainer.val_spec.sample_size == [16, 16, 32]


def _fit_until_rebudget(make, overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The iteration at which a budgeted run first re-plans its schedule (steps and validation stubbed)."""
    trainer = make(["iterations_per_epoch=30", "num_epochs=1", "use_plan_schedule=false", *overrides], budget_seconds=3600.0)
    seen: list[int] = []

    def replan(self: Any, state: Any, per_iteration: float) -> None:
        seen.append(state.iteration)
        state.total_iterations = state.iteration  # stop here

    monkeypatch.setattr("autoseg.training.replanning.BudgetReplanner.replan", replan)
    monkeypatch.setattr(trainer.step, "train", lambda data, target: (0.0, None))
    monkeypatch.setattr(trainer, "_end_epoch", lambda *args: None)
    monkeypatch.setattr(trainer, "save", lambda name: None)
    trainer.fit()
    return seen[0]


def _budget_probe_iterations(make, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fit_until_rebudget(make, ["budget_probe_iterations=3"], monkeypatch) == 3 + WARMUP_ITERATIONS
    assert _fit_until_rebudget(make, ["budget_probe_iterations=5"], monkeypatch) == 5 + WARMUP_ITERATIONS


def test_a_finished_schedule_is_not_extended_at_its_last_epoch_end(make, monkeypatch: pytest.MonkeyPatch) -> None:
    # ACDC's 10-minute fold re-planned 2388 -> 2389 after its last epoch and trained an 11th epoch of
    # one iteration at learning rate 0
    trainer = make(["iterations_per_epoch=4", "num_epochs=2", "use_plan_schedule=false", "budget_probe_iterations=100"],
                   budget_seconds=3600.0)
    calls: list[int] = []

    def replan(self: Any, state: Any, per_iteration: float) -> None:
        calls.append(state.iteration)
        state.total_iterations += 1 if len(calls) == 2 else 0  # a deadline with slack, at the last epoch end

    monkeypatch.setattr("autoseg.training.replanning.BudgetReplanner.replan", replan)
    monkeypatch.setattr(trainer.step, "train", lambda data, target: (0.0, None))
    monkeypatch.setattr(trainer, "_end_epoch", lambda *args: None)
    monkeypatch.setattr(trainer, "save", lambda name: None)
    trainer.fit()
    assert calls == [4] and trainer.state.iteration == 8  # re-planned after epoch 1, not after the last


def _budget_safety_fraction(make) -> None:
    start = time.monotonic()
    trainer = make(["budget_safety_fraction=0.25"], budget_seconds=100.0, start_time=start)
    run = trainer.run
    assert deadline(run.start_time, run.budget_seconds, run.config["budget_safety_fraction"]) == pytest.approx(start + 75.0)
    assert trainer.budget_replanner().deadline == pytest.approx(start + 75.0)


# ----------------------------------------------------------------------------------- optimisation

_PARAMETERS = [torch.nn.Parameter(torch.ones(2))]


def _optimizer(*overrides: str) -> torch.optim.Optimizer:
    return build_optimizer(_PARAMETERS, _config(*overrides)["optimizer"])


def _optimizer_name(make) -> None:
    assert type(_optimizer()) is torch.optim.SGD
    assert type(_optimizer("optimizer.name=adamw")) is torch.optim.AdamW
    with pytest.raises(TrainingError, match="--set optimizer.name='sgdd': choose sgd, adam or adamw"):
        _optimizer("optimizer.name=sgdd")


def _group(*overrides: str) -> dict[str, Any]:
    return _optimizer(*overrides).param_groups[0]


def _optimizer_lr(make) -> None:
    assert _group("optimizer.lr=0.5")["lr"] == 0.5


def _optimizer_momentum(make) -> None:
    assert _group("optimizer.momentum=0.5")["momentum"] == 0.5


def _optimizer_nesterov(make) -> None:
    assert _group()["nesterov"] and not _group("optimizer.nesterov=false")["nesterov"]


def _optimizer_betas(make) -> None:
    assert _group("optimizer.name=adam", "optimizer.betas=[0.5,0.9]")["betas"] == (0.5, 0.9)


def _optimizer_weight_decay(make) -> None:
    assert _group("optimizer.weight_decay=0.1")["weight_decay"] == 0.1


def _lr_schedule_name(make) -> None:
    trainer = make(["lr_schedule.name=constant"])
    trainer.state.iteration = trainer.state.total_iterations // 2
    assert learning_rate(trainer.run.config, trainer.state) == 0.01


def _lr_schedule_exponent(make) -> None:
    trainer = make(["lr_schedule.exponent=2", "num_epochs=2", "use_plan_schedule=false"])
    trainer.state.iteration = 2  # half of 4
    assert learning_rate(trainer.run.config, trainer.state) == pytest.approx(0.01 * 0.5**2)


def _step_change(make, clip: float) -> float:
    """Norm of the weight change of one SGD step (lr 1, no momentum or decay) with this clip."""
    trainer = make([f"grad_clip={clip}", "optimizer.lr=1", "optimizer.momentum=0", "optimizer.nesterov=false", "optimizer.weight_decay=0"])
    before = torch.cat([p.detach().flatten().clone() for p in trainer.setup.network.parameters()])
    from autoseg.training.data_loading import TRAIN_STREAM, BatchSource

    trainer.step.train(*batch_to_device(BatchSource(trainer.train_spec, 0, TRAIN_STREAM)(0), trainer.device, trainer.setup.memory_format))
    after = torch.cat([p.detach().flatten() for p in trainer.setup.network.parameters()])
    return float((after - before).norm())


def _grad_clip(make) -> None:
    assert _step_change(make, 1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert _step_change(make, 0) > 1e-2


# ----------------------------------------------------------------------------------- loss

_LOGITS = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
_TARGET = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
_TARGET[1] = 0  # sample 2 has no foreground: batch and per-sample Dice differ


def _loss(*overrides: str) -> float:
    return float(segmentation_loss(LabelSpec(3, None, None), _config(*overrides)["loss"])([_LOGITS], _TARGET))


def _loss_weight_ce(make) -> None:
    assert _loss("loss.weight_ce=2") - _loss() == pytest.approx(float(F.cross_entropy(_LOGITS, _TARGET[:, 0])), rel=1e-5)


def _loss_weight_dice(make) -> None:
    assert _loss("loss.weight_dice=0") == pytest.approx(float(F.cross_entropy(_LOGITS, _TARGET[:, 0])), rel=1e-5)


def _loss_batch_dice(make) -> None:
    assert _loss("loss.batch_dice=false") != pytest.approx(_loss())


def _loss_dice_denominator(make) -> None:
    probs = torch.softmax(_LOGITS, 1)[:, 1:]
    target = F.one_hot(_TARGET[:, 0], 3).movedim(-1, 1)[:, 1:].float()
    axes = (0, 2, 3, 4)
    squared = (2 * (probs * target).sum(axes) + 1e-5) / ((probs**2).sum(axes) + target.sum(axes) + 1e-5)
    ce = float(F.cross_entropy(_LOGITS, _TARGET[:, 0]))
    assert _loss("loss.dice_denominator=squared") == pytest.approx(ce + 1 - float(squared.mean()), rel=1e-5)
    assert _loss() != pytest.approx(_loss("loss.dice_denominator=squared"))
    with pytest.raises(TrainingError, match="--set loss.dice_denominator='cubed': choose standard or squared; the default"):
        _loss("loss.dice_denominator=cubed")


def _training_outputs(trainer: Trainer) -> int:
    """Outputs of the network in training mode (one per supervised decoder stage)."""
    return len(trainer.setup.model(torch.zeros(1, 1, *PATCH))[0])


def _loss_deep_supervision(make) -> None:
    assert _training_outputs(make()) == 2  # 3 stages: 2 decoder stages
    trainer = make(["loss.deep_supervision=false"])
    assert trainer.setup.network_options["deep_supervision"] is False and _training_outputs(trainer) == 1


def _oversample_foreground(make, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoseg.training.data_loading import TRAIN_STREAM, BatchSource

    for share, forced in ((0.5, 1), (1.0, 2), (0.0, 0)):
        source = BatchSource(make([f"oversample_foreground={share}"]).train_spec, 0, TRAIN_STREAM)
        calls: list[int] = []
        original = source._foreground_voxel
        monkeypatch.setattr(source, "_foreground_voxel", lambda locations: calls.append(1) or original(locations))
        source(0)
        assert len(calls) == forced, share


def _pseudo_dice_ema(make, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make(["pseudo_dice_ema=0.25"])
    result = PseudoValidationResult(0.0, 1.0, [1.0, 1.0])
    monkeypatch.setattr("autoseg.training.trainer.pseudo_validate", lambda *args: result)
    monkeypatch.setattr(trainer, "save", lambda name: None)
    monkeypatch.setattr(trainer.monitor, "write_history", lambda history: None)
    trainer.state.ema = 0.5
    trainer._end_epoch([0.1], None, time.monotonic(), None)
    assert trainer.state.ema == pytest.approx(0.25 * 0.5 + 0.75 * 1.0)


# ----------------------------------------------------------------------------------- performance


def _mixed_precision(make) -> None:
    assert make().setup.amp_dtype is None
    assert make(["mixed_precision=bf16"]).setup.amp_dtype is torch.bfloat16


def _channels_last(make) -> None:
    def last(trainer: Trainer) -> bool:
        return any(w.dim() == 5 and not w.is_contiguous() for w in trainer.setup.network.parameters())

    trainer = make(["channels_last=true"])
    assert trainer.setup.memory_format is torch.channels_last_3d and last(trainer)
    assert not last(make(["channels_last=false"]))
    # auto (the default): channels-last for a 3D network on CPU in float32, contiguous under autocast
    assert last(make(["mixed_precision=off"])) and not last(make(["mixed_precision=bf16"]))


def _compile(make, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    make()
    assert not compiled
    assert make(["compile=true"]).setup.model is compiled[0]


class _StreamArgs(Exception):
    """Raised by a stand-in BatchStream to hand its arguments to the test."""


def _stream_args(make, overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple:
    def record(*args: Any, **kwargs: Any) -> None:
        raise _StreamArgs(args, kwargs)

    monkeypatch.setattr("autoseg.training.trainer.BatchStream", record)
    trainer = make(overrides)
    with pytest.raises(_StreamArgs) as info:
        trainer.fit()
    return info.value.args


def _num_workers(make, monkeypatch: pytest.MonkeyPatch) -> None:
    assert make(["num_workers=3"]).workers() == 3
    args, _ = _stream_args(make, ["num_workers=1"], monkeypatch)
    assert args[2] == 1


def test_the_streams_start_where_the_run_stands(make) -> None:
    """A resumed run continues both batch sequences instead of repeating their first batches."""
    trainer = make(["val_iterations_per_epoch=4"])
    trainer.state.iteration, trainer.state.epoch = 30, 3
    for stream, spec, stream_id, first in ((trainer.training_stream(0), trainer.train_spec, TRAIN_STREAM, 30),
                                           (trainer.validation_stream(0), trainer.val_spec, VAL_STREAM, 12)):
        with stream:
            expected = BatchSource(spec, trainer.run.seed, stream_id)(first)
            batch = next(stream)
        assert all(np.array_equal(batch[k], expected[k]) for k in ("data", "target"))


def _math_threads(make, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert choose_math_threads(_config("math_threads=3")["math_threads"], cpu, False) == ThreadChoice(3, torch.get_num_threads())
    monkeypatch.setattr("autoseg.utils.cpu_load.idle_cores", lambda: 0.0)  # every core busy
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert choose_math_threads(_config()["math_threads"], cpu, False).threads == 1
    monkeypatch.undo()
    choice = ThreadChoice(1, 2, 1.0, 2)
    trainer = make(math_threads=choice)
    monkeypatch.setattr("autoseg.training.trainer.BatchStream", lambda *a, **k: (_ for _ in ()).throw(_StreamArgs()))
    with pytest.raises(_StreamArgs):
        trainer.fit()
    assert choice.describe() in (trainer.run.fold_folder / "training_log.txt").read_text()


def _prefetch_batches(make, monkeypatch: pytest.MonkeyPatch) -> None:
    args, _ = _stream_args(make, ["prefetch_batches=5"], monkeypatch)
    assert args[3] == 5
    with BatchStream(lambda i: {"i": np.array([i])}, num_workers=1, prefetch=5) as stream:
        assert stream.queues[0]._maxsize == 5


def _case_cache_mb(make, monkeypatch: pytest.MonkeyPatch) -> None:
    """A number caps each source's decompressed cases (those that fit, in the order it opens them); 0
    keeps the store's handles; auto shares an eighth of the memory over the data processes of all
    ranks; the batches are the same either way."""
    store = BatchSource(make(["case_cache_mb=0"]).train_spec, 0, TRAIN_STREAM)
    case_ids = store.spec.case_ids
    handles = [store._case(c)[:2] for c in case_ids]
    assert not any(isinstance(array, np.ndarray) for pair in handles for array in pair)
    sizes = [sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in pair) for pair in handles]
    cap = sizes[0] + sizes[1] + sizes[2] // 2  # two and a half cases
    trainer = make([f"case_cache_mb={cap / 2**20!r}"])
    assert trainer.train_spec.case_cache_bytes == trainer.val_spec.case_cache_bytes == cap
    cached = BatchSource(trainer.train_spec, trainer.run.seed, TRAIN_STREAM)
    expected, left = [], cap
    for size in sizes:
        expected.append(size <= left)
        left -= size if size <= left else 0
    assert [isinstance(cached._case(c)[0], np.ndarray) for c in case_ids] == expected
    assert expected[:3] == [True, True, False]
    for index in range(3):
        a, b = store(index), cached(index)
        assert all(np.array_equal(a[k], b[k]) for k in ("data", "target"))
    memory = 8 * 3 * 2 * 2**20 * 1000  # an eighth: 1000 MiB for 3 processes of each of 2 ranks
    monkeypatch.setattr("os.sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": memory // 4096}[name])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert make(["case_cache_mb=auto", "num_workers=2"]).train_spec.case_cache_bytes == 1000 * 2**20
    with pytest.raises(TrainingError, match=r"--set case_cache_mb=-1: must be >= 0 or auto"):
        make(["case_cache_mb=-1"])


def _slow(index: int) -> dict[str, np.ndarray]:
    time.sleep(30)
    return {}


def _worker_timeout_seconds(make, monkeypatch: pytest.MonkeyPatch) -> None:
    args, _ = _stream_args(make, ["worker_timeout_seconds=7"], monkeypatch)
    assert args[4] == 7
    with BatchStream(_slow, num_workers=1, timeout_seconds=1) as stream:
        with pytest.raises(TrainingError, match=r"produced no batch in 1 s"):
            next(stream)


# ----------------------------------------------------------------------------------- augmentation

_ONE_CHANNEL = [{"scheme": "zscore", "use_mask": False}]


def _pipeline(patch: list[int], aug: dict[str, Any], previous: list[int] | None = None) -> list[tuple[str, str]]:
    """What the augmentation pipeline is: its transforms and their parameters."""
    pipeline = training_transforms(patch, resolve_augmentation(aug, patch, _ONE_CHANNEL), previous, 1)
    return [(type(t).__name__, repr(sorted((k, repr(v)) for k, v in vars(t).items()))) for t in pipeline.transforms]


# key (below augmentation.) -> (patch, a non-default value). A cascade_* key is checked with previous-stage labels.
_AUGMENTATION_CHANGES: dict[str, tuple[list[int], Any]] = {
    "anisotropy_threshold": ([8, 32, 32], 5.0),
    "rotation.p": ([16, 16, 16], 0.5),
    "rotation.degrees_3d": ([16, 16, 16], 10.0),
    "rotation.degrees_2d": ([16, 16], 90.0),
    "scaling.p": ([16, 16, 16], 0.5),
    "scaling.range": ([16, 16, 16], [0.9, 1.1]),
    "elastic.p": ([16, 16, 16], 0.5),
    "elastic.alpha": ([16, 16, 16], [0.0, 100.0]),
    "elastic.sigma": ([16, 16, 16], [5.0, 6.0]),
    "spatial_order_data": ([16, 16, 16], 3),
    "spatial_order_seg": ([16, 16, 16], 0),
    "gaussian_noise.p": ([16, 16, 16], 0.5),
    "gaussian_noise.variance": ([16, 16, 16], [0.0, 0.2]),
    "gaussian_blur.p": ([16, 16, 16], 0.5),
    "gaussian_blur.p_per_channel": ([16, 16, 16], 1.0),
    "gaussian_blur.sigma": ([16, 16, 16], [1.0, 2.0]),
    "brightness.p": ([16, 16, 16], 0.5),
    "brightness.range": ([16, 16, 16], [0.5, 1.5]),
    "contrast.p": ([16, 16, 16], 0.5),
    "contrast.range": ([16, 16, 16], [0.5, 1.5]),
    "low_resolution.p": ([16, 16, 16], 0.5),
    "low_resolution.p_per_channel": ([16, 16, 16], 1.0),
    "low_resolution.zoom": ([16, 16, 16], [0.25, 1.0]),
    "gamma_inverted.p": ([16, 16, 16], 0.5),
    "gamma_inverted.range": ([16, 16, 16], [0.5, 2.0]),
    "gamma.p": ([16, 16, 16], 0.5),
    "gamma.range": ([16, 16, 16], [0.5, 2.0]),
    "mirror.p": ([16, 16, 16], 0.3),
    "mirror.axes": ([16, 16, 16], [1]),
    "mask_channels": ([16, 16, 16], [0]),
    "cascade_binary_operation.p": ([16, 16, 16], 0.9),
    "cascade_binary_operation.max_size": ([16, 16, 16], 2),
    "cascade_remove_component.p": ([16, 16, 16], 0.9),
    "cascade_remove_component.max_fraction": ([16, 16, 16], 0.5),
}


def _augmentation_check(key: str) -> Callable[..., None]:
    def check(make) -> None:
        patch, value = _AUGMENTATION_CHANGES[key]
        previous = [1, 2] if key.startswith("cascade_") else None
        default = _config()["augmentation"]
        changed = _config(f"augmentation.{key}={value}")["augmentation"]
        assert _pipeline(patch, changed, previous) != _pipeline(patch, default, previous)

    return check


def _mirror_axes(make) -> None:
    assert make(plan_changes={"mirror_axes": None}).mirror_axes == [0, 1, 2]  # a plan from before the rule
    assert make(plan_changes={"mirror_axes": [2]}).mirror_axes == [2]
    assert make(["augmentation.mirror.axes=[0,1]"], plan_changes={"mirror_axes": [2]}).mirror_axes == [0, 1]
    assert make(["augmentation.mirror.p=0"], plan_changes={"mirror_axes": [2]}).mirror_axes == []


# ----------------------------------------------------------------------------------- network


def _network_options(make) -> None:
    assert _training_outputs(make(["network_options={deep_supervision: false}"])) == 1


def _adversarial(key: str, value: str, expected: Any) -> Callable[..., None]:
    def check(make) -> None:
        config = resolve_config("vox2vox", [f"adversarial.{key}={value}"])
        network = torch.nn.Conv3d(1, 3, 1)
        step = AdversarialStep(
            network, network, "vox2vox", build_optimizer(network.parameters(), config["optimizer"]), LabelSpec(3, None, None),
            config, torch.device("cpu"), None, wrap=lambda m: m, in_channels=1,
        )
        assert step.d_optimizer.param_groups[0][key.removeprefix("discriminator_")] == expected

    return check


CHECKS: dict[str, Callable[..., None]] = {
    "num_epochs": _num_epochs,
    "use_plan_schedule": _use_plan_schedule,
    "iterations_per_epoch": _iterations_per_epoch,
    "val_iterations_per_epoch": _val_iterations_per_epoch,
    "batch_size": _batch_size,
    "patch_size": _patch_size,
    "budget_probe_iterations": _budget_probe_iterations,
    "budget_safety_fraction": _budget_safety_fraction,
    "optimizer.name": _optimizer_name,
    "optimizer.lr": _optimizer_lr,
    "optimizer.momentum": _optimizer_momentum,
    "optimizer.nesterov": _optimizer_nesterov,
    "optimizer.betas": _optimizer_betas,
    "optimizer.weight_decay": _optimizer_weight_decay,
    "lr_schedule.name": _lr_schedule_name,
    "lr_schedule.exponent": _lr_schedule_exponent,
    "grad_clip": _grad_clip,
    "loss.weight_ce": _loss_weight_ce,
    "loss.weight_dice": _loss_weight_dice,
    "loss.batch_dice": _loss_batch_dice,
    "loss.deep_supervision": _loss_deep_supervision,
    "loss.dice_denominator": _loss_dice_denominator,
    "oversample_foreground": _oversample_foreground,
    "pseudo_dice_ema": _pseudo_dice_ema,
    "mixed_precision": _mixed_precision,
    "channels_last": _channels_last,
    "compile": _compile,
    "num_workers": _num_workers,
    "math_threads": _math_threads,
    "prefetch_batches": _prefetch_batches,
    "worker_timeout_seconds": _worker_timeout_seconds,
    "case_cache_mb": _case_cache_mb,
    **{f"augmentation.{key}": _augmentation_check(key) for key in _AUGMENTATION_CHANGES},
    "network_options": _network_options,
    "adversarial.discriminator_lr": _adversarial("discriminator_lr", "0.5", 0.5),
    "adversarial.discriminator_betas": _adversarial("discriminator_betas", "[0.1,0.2]", (0.1, 0.2)),
}
# mirror.p and mirror.axes also decide the test-time mirroring recorded in the checkpoint.
EXTRA_CHECKS = {"augmentation.mirror.p and axes (mirror_axes)": _mirror_axes}


def test_every_setting_has_a_check() -> None:
    defaults = load_defaults()
    keys = set(flatten(defaults))
    for name in list_networks():  # a family's own training defaults are settings too
        keys |= set(flatten(get_network_spec(name).training_defaults))
    assert keys == set(CHECKS)


@pytest.mark.parametrize("key", [*CHECKS, *EXTRA_CHECKS])
def test_setting_does_what_it_says(key: str, make: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch) -> None:
    check = {**CHECKS, **EXTRA_CHECKS}[key]
    needs_monkeypatch = "monkeypatch" in check.__code__.co_varnames[: check.__code__.co_argcount]
    check(make, monkeypatch) if needs_monkeypatch else check(make)
