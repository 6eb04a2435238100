"""The value rules of the training settings (config_rules.py): every setting has one, the defaults keep
them, and each kind of bad value is refused with the setting, the value and what it may be."""

from __future__ import annotations

import pytest

from autoseg.planning.memory import machine_ram_bytes

from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec, list_networks
from autoseg.training.config import flatten, load_defaults, resolve_config, resolve_training_config
from autoseg.training.config_rules import check_value, rule_for


def _settings() -> dict[str, object]:
    """Every dotted setting with its default, the families' own training defaults included."""
    settings = flatten(load_defaults())
    for name in list_networks():
        settings.update(flatten(get_network_spec(name).training_defaults))
    return settings


def test_every_setting_but_a_switch_has_a_rule() -> None:
    settings = _settings()
    switches = {k for k, v in settings.items() if isinstance(v, bool) or k == "channels_last"}
    free = {"network_options"}  # checked by the network builder, option by option
    assert {k for k in settings if rule_for(k) is None} == switches | free
    assert switches >= {"compile", "loss.deep_supervision", "optimizer.nesterov"}


def test_the_defaults_and_every_familys_defaults_keep_the_rules() -> None:
    for key, default in _settings().items():
        check_value(key, default, default)
    for name in list_networks():
        resolve_config(name)


@pytest.mark.parametrize("override, message", [
    ("num_workers=-1", r"--set num_workers=-1: must be >= 0 and at most \d+ \(4 per core of this machine\) or auto \(0: batches built in the training process\); the default is 'auto'"),
    ("case_cache_mb=-1", r"--set case_cache_mb=-1: must be >= 0 or auto"),
    ("math_threads=0", r"--set math_threads=0: must be >= 1 and at most \d+ \(4 per core of this machine\) or auto"),
    # 100000 hung the first matrix multiply, 2**31 stopped with torch's internal "Overflow when unpacking long"
    # a queue of 2**31 batches stopped training with an internal OverflowError
    ("prefetch_batches=2147483648", r"--set prefetch_batches=2147483648: must be from 1 to 250 \(batches each worker"),
    ("math_threads=100000", r"--set math_threads=100000: must be >= 1 and at most \d+ \(4 per core"),
    ("math_threads=2147483648", r"--set math_threads=2147483648: must be >= 1 and at most"),
    ("num_workers=1000000000000000000000000000000", r"--set num_workers=1000000000000000000000000000000: must be >= 0 and at most \d+ \(4 per core"),
    ("num_epochs=0", r"--set num_epochs=0: must be >= 1; the default is 1000"),
    ("batch_size=0", r"--set batch_size=0: must be >= 1; the default is null \(chosen by the plan or for the machine\)"),
    ("val_iterations_per_epoch=-1", r"must be from 0 to 10000 \(0: no pseudo-validation\)"),
    # validated forever after the first epoch, without an error
    ("val_iterations_per_epoch=10000000000000000000000", r"--set val_iterations_per_epoch=10000000000000000000000: must be "
                                                         r"from 0 to 10000 \(0: no pseudo-validation\); the default is 50"),
    # these overflowed float32 mid-training and stopped it as "diverged ... lower the learning rate"
    ("loss.weight_ce=1e308", r"--set loss.weight_ce=1e\+308: must be >= 0 and <= 1000; the default is 1.0"),
    ("loss.weight_dice=1001", r"--set loss.weight_dice=1001.0: must be >= 0 and <= 1000"),
    ("augmentation.brightness.range=[0.75, 1e300]", r"--set augmentation.brightness.range=\[0.75, 1e\+300\]: must be a "
                                                    r"\[low, high\] pair of numbers >= 0 and <= 100 \(multipliers\)"),
    ("augmentation.contrast.range=[0.75, 1e300]", r"must be a \[low, high\] pair of numbers >= 0 and <= 100 \(multipliers\)"),
    ("augmentation.gaussian_noise.variance=[0, 1e300]", r"--set augmentation.gaussian_noise.variance=\[0, 1e\+300\]: must be "
                                                        r"a \[low, high\] pair of numbers >= 0 and <= 100"),
    ("worker_timeout_seconds=true", r"--set worker_timeout_seconds=True: expected float, got bool"),
    ("optimizer.lr=0", r"--set optimizer.lr=0.0: must be > 0; the default is 0.01"),
    ("optimizer.lr=-1e-3", r"--set optimizer.lr=-0.001: must be > 0"),
    ("optimizer.lr=.inf", r"--set optimizer.lr=inf: must be a finite number > 0"),  # trained NaN, saved as best
    ("optimizer.lr=.nan", r"--set optimizer.lr=nan: must be a finite number > 0"),
    pytest.param("optimizer.lr=" + "9" * 400, r"--set optimizer.lr=inf: must be a finite number > 0",
                 id="lr-of-400-digits"),  # was an internal OverflowError
    pytest.param("num_epochs=" + "9" * 400, r"--set num_epochs=9+: is beyond any float \(1.8e\+308\); it must be >= 1; the "
                 "default is 1000", id="epochs-of-400-digits"),  # was told it "must be >= 1"
    ("augmentation.scaling.range=[0.7, .inf]", r"must be a \[low, high\] pair of numbers"),
    ("optimizer.momentum=1", r"--set optimizer.momentum=1.0: must be >= 0 and < 1"),
    ("optimizer.betas=[0.9, 1.0]", r"--set optimizer.betas=\[0.9, 1.0\]: must be two numbers >= 0 and < 1"),
    ("optimizer.betas=[0.9]", r"must be two numbers >= 0 and < 1"),
    ("optimizer.weight_decay=-1e-5", r"must be >= 0"),
    ("optimizer.name=sgdd", r"--set optimizer.name='sgdd': choose sgd, adam or adamw; the default is 'sgd'"),
    ("lr_schedule.name=cosine", r"choose poly or constant"),
    ("mixed_precision=fp8", r"--set mixed_precision='fp8': choose auto, fp16, bf16 or off"),
    ("grad_clip=-1", r"must be >= 0 \(0: no clipping\)"),
    ("oversample_foreground=1.2", r"must be between 0 and 1"),
    ("pseudo_dice_ema=1", r"must be >= 0 and < 1"),
    ("prefetch_batches=0", r"must be from 1 to 250"),
    ("worker_timeout_seconds=0", r"must be > 0"),
    ("augmentation.rotation.p=1.5", r"--set augmentation.rotation.p=1.5: must be between 0 and 1; the default is 0.2"),
    ("augmentation.gaussian_blur.p_per_channel=-0.1", r"must be between 0 and 1"),
    ("augmentation.mirror.p=2", r"must be between 0 and 1"),
    ("augmentation.rotation.degrees_3d=200", r"must be between 0 and 180"),
    ("augmentation.rotation.degrees_2d=-5", r"must be between 0 and 180"),
    ("augmentation.scaling.range=[1.4, 0.7]", r"--set augmentation.scaling.range=\[1.4, 0.7\]: must be a \[low, high\] pair with low <= high"),
    ("augmentation.scaling.range=[0, 1.4]", r"must be a \[low, high\] pair of numbers > 0 and <= 10"),
    # the region cropped for a scale of 1e300 overflowed: an internal ValueError mid-training
    ("augmentation.scaling.range=[0.7, 1e300]", r"--set augmentation.scaling.range=\[0.7, 1e\+300\]: must be a \[low, high\] "
                                               r"pair of numbers > 0 and <= 10; the default is \[0.7, 1.4\]"),
    ("augmentation.scaling.range=[0.7, 1.0, 1.4]", r"must be a \[low, high\] pair"),
    ("augmentation.scaling.range=[0.7, big]", r"must be a \[low, high\] pair"),
    ("augmentation.low_resolution.zoom=[0.5, 1.5]", r"must be a \[low, high\] pair of numbers > 0 and <= 1"),
    ("augmentation.gamma.range=[0, 1.5]", r"> 0"),
    ("augmentation.gaussian_noise.variance=[-0.1, 0.1]", r">= 0"),
    # 1e300 stopped numpy mid-training (a filter or coordinates too large); 1e5 blurred for 6 s a sample
    ("augmentation.gaussian_blur.sigma=[0.5, 1e5]", r"--set augmentation.gaussian_blur.sigma=\[0.5, 100000.0\]: must be a "
                                                    r"\[low, high\] pair of numbers >= 0 and <= 1000 \(voxels\)"),
    ("augmentation.elastic.sigma=[9, 1e300]", r"must be a \[low, high\] pair of numbers >= 0 and <= 1000 \(voxels\)"),
    ("augmentation.elastic.alpha=[0, 1e300]", r"must be a \[low, high\] pair of numbers >= 0 and <= 1e\+06"),
    ("augmentation.spatial_order_data=6", r"must be from 0 to 5 \(a spline order\)"),
    ("augmentation.anisotropy_threshold=0.5", r"must be >= 1"),
    ("augmentation.mask_channels=[-1]", r"must be a list of whole numbers >= 0 \(image channel indices\)"),
    ("augmentation.mask_channels=[0.5]", r"must be a list of whole numbers"),
    ("augmentation.cascade_binary_operation.max_size=0", r"must be from 1 to 12 \(voxels of a ball's radius\)"),
    # 32 ran out of memory in scipy's erosion mid-training, 10**12 stopped numpy there (the array is too big)
    ("augmentation.cascade_binary_operation.max_size=32", r"--set augmentation.cascade_binary_operation.max_size=32: must be "
                                                          r"from 1 to 12 \(voxels of a ball's radius\); the default is 8"),
    ("augmentation.cascade_binary_operation.max_size=1000000000000", r"must be from 1 to 12"),
    ("augmentation.cascade_remove_component.max_fraction=0", r"must be > 0 and <= 1"),
    ("patch_size=[0, 64, 64]", r"--set patch_size=\[0, 64, 64\]: must be a list of whole numbers >= 1 \(voxels per axis\)"),
    ("patch_size=[16.5, 64, 64]", r"must be a list of whole numbers"),
])
def test_a_value_out_of_range_is_refused_with_what_it_may_be(override: str, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        resolve_config("unet", [override])


def test_a_refusal_names_the_value_without_any_set_not_an_earlier_sets() -> None:
    """Was: an earlier --set of the same key was called "the default" (and typed the later one: a
    --set num_workers=auto after --set num_workers=2 was refused as not an int); the plan's value was too."""
    with pytest.raises(TrainingError, match=r"^--set optimizer.lr=-1.0: must be > 0; the default is 0.01$"):
        resolve_config("unet", ["optimizer.lr=0.5", "optimizer.lr=-1"])
    with pytest.raises(TrainingError, match=r"^--set optimizer.lr=-1.0: must be > 0; the plan's value is 0.001$"):
        resolve_config("unet", ["optimizer.lr=-1"], planned={"optimizer": {"lr": 0.001}})
    with pytest.raises(TrainingError, match=r"^--set iterations_per_epoch=0: must be >= 1; the plan's value is 7$"):
        resolve_config("unet", ["iterations_per_epoch=3", "iterations_per_epoch=0"], planned={"iterations_per_epoch": 7})
    assert resolve_config("unet", ["num_workers=2", "num_workers=auto"])["num_workers"] == "auto"
    assert resolve_config("unet", ["batch_size=2", "batch_size=null"])["batch_size"] is None


def test_a_familys_own_settings_have_rules_too() -> None:
    with pytest.raises(TrainingError, match=r"--set adversarial.discriminator_lr=0.0: must be > 0"):
        resolve_config("vox2vox", ["adversarial.discriminator_lr=0"])
    with pytest.raises(TrainingError, match=r"adversarial.discriminator_betas=\[1.0, 0.999\]: must be two numbers"):
        resolve_config("vox2vox", ["adversarial.discriminator_betas=[1.0, 0.999]"])


@pytest.mark.parametrize("override", [
    "num_workers=0", "case_cache_mb=0", "case_cache_mb=2.5", "val_iterations_per_epoch=0", "grad_clip=0",
    "optimizer.betas=[0.999, 0.9]", "augmentation.rotation.p=0", "augmentation.rotation.p=1",
    "augmentation.scaling.range=[1, 1]", "augmentation.scaling.range=[0.7, 10]", "augmentation.elastic.alpha=[0, 0]", "augmentation.elastic.alpha=[0, 1e6]",
    "augmentation.elastic.sigma=[0, 1000]", "augmentation.gaussian_blur.sigma=[1000, 1000]", "augmentation.low_resolution.zoom=[1, 1]",
    "augmentation.rotation.degrees_3d=180", "augmentation.spatial_order_seg=0", "augmentation.mask_channels=[]",
    "oversample_foreground=1", "batch_size=null", "val_iterations_per_epoch=10000", "loss.weight_ce=1000",
    "augmentation.brightness.range=[0, 100]", "augmentation.gaussian_noise.variance=[0, 100]",
    "worker_timeout_seconds=0.5",  # was refused as "expected int" though its rule said "> 0" "augmentation.cascade_binary_operation.max_size=12", "num_workers=auto", "loss.weight_ce=0",
])
def test_the_edges_of_each_range_are_accepted(override: str) -> None:
    resolve_config("unet", [override])


def test_a_loss_needs_a_term() -> None:
    assert resolve_config("unet", ["loss.weight_dice=0"])["loss"]["weight_ce"] == 1.0
    with pytest.raises(TrainingError, match=r"^--set loss.weight_ce=0.0 and --set loss.weight_dice=0.0 leave no loss to train on"):
        resolve_config("unet", ["loss.weight_ce=0", "loss.weight_dice=0"])


def test_sgd_without_momentum_needs_nesterov_off() -> None:
    """--set optimizer.momentum=0 (plain SGD) with the default nesterov: true stopped training with torch's internal
    ValueError; Adam ignores both settings."""
    with pytest.raises(TrainingError, match=r"^--set optimizer.momentum=0.0 with optimizer.nesterov=true: a Nesterov step "
                                            r"needs momentum; add --set optimizer.nesterov=false for plain SGD"):
        resolve_config("unet", ["optimizer.momentum=0"])
    # the plans file's value was refused as a --set the user never gave
    with pytest.raises(TrainingError, match=r"^optimizer.momentum=0.0 \(the plans file's training settings\) with "):
        resolve_config("unet", planned={"optimizer": {"momentum": 0}})
    with pytest.raises(TrainingError, match=r"^--set loss.weight_ce=0.0 and loss.weight_dice=0.0 \(the plans file's "):
        resolve_config("unet", ["loss.weight_ce=0"], planned={"loss": {"weight_dice": 0}})
    resolve_config("unet", ["optimizer.momentum=0", "optimizer.nesterov=false"])
    resolve_config("unet", ["optimizer.momentum=0", "optimizer.name=adam"])


def test_a_float_yaml_reads_as_a_string_is_taken_in_a_list_and_an_open_setting_too() -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: taken for ``optimizer.lr`` (docs/configuration.md), it was refused
    inside a list (``must be two numbers``) and for settings that also take ``auto`` (``expected int or float``)."""
    config = resolve_config("unet", ["optimizer.betas=[0.9, 1e-3]", "augmentation.scaling.range=[5e-1, 2e0]",
                                     "case_cache_mb=1e3", "augmentation.rotation.degrees_2d=1e1"])
    assert config["optimizer"]["betas"] == [0.9, 0.001] and config["augmentation"]["scaling"]["range"] == [0.5, 2.0]
    assert (config["case_cache_mb"], config["augmentation"]["rotation"]["degrees_2d"]) == (1000.0, 10.0)
    with pytest.raises(TrainingError, match=r"--set optimizer.betas=\[0.9, inf\]: must be two numbers >= 0 and < 1"):
        resolve_config("unet", ["optimizer.betas=[0.9, 1e400]"])
    with pytest.raises(TrainingError, match=r"--set patch_size=\[10.0, 16, 16\]: must be a list of whole numbers"):
        resolve_config("unet", ["patch_size=[1e1, 16, 16]"])  # a patch is whole voxels: a float is refused


def _plan(patch: list[int]) -> dict[str, object]:
    """The parts of a plan's configuration that resolve_training_config reads."""
    return {"network": {"name": "unet"}, "patch_size": patch, "batch_size": 2, "mirror_axes": list(range(len(patch))),
            "normalization": [{"scheme": "zscore", "use_mask": False}, {"scheme": "zscore", "use_mask": True}]}


@pytest.mark.parametrize("override, patch, message", [
    # [] was taken as null: the run trained the plan's patch without a word
    ("patch_size=[]", [16, 16, 16], r"--set patch_size=\[\]: this configuration is 3D; give 3 values \(the plan's patch is \[16, 16, 16\]\)"),
    ("patch_size=[16, 16]", [16, 16, 16], r"this configuration is 3D; give 3 values"),
    ("patch_size=[16, 16, 16]", [16, 16], r"this configuration is 2D; give 2 values"),
    ("augmentation.mirror.axes=[1, 2, 3]", [16, 16, 16], r"augmentation.mirror.axes=\[1, 2, 3\]: give distinct spatial axes of the 3D patch, from 0 to 2"),
    ("augmentation.mirror.axes=[0, 0]", [16, 16, 16], r"give distinct spatial axes"),
    ("augmentation.mirror.axes=[2]", [16, 16], r"axes of the 2D patch, from 0 to 1"),
    ("augmentation.mirror.axes=[-1]", [16, 16, 16], r"must be a list of whole numbers >= 0 \(spatial axes of the patch\)"),
    ("augmentation.mask_channels=[5]", [16, 16, 16], r"mask_channels=\[5\]: channels \[5\] do not exist \(the plan has 2\)"),
])
def test_a_patch_axis_or_channel_the_plan_lacks_is_refused(override: str, patch: list[int], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        resolve_training_config("unet", [override], _plan(patch))


def test_a_batch_whose_input_alone_exceeds_the_machines_ram_is_refused() -> None:
    """--set batch_size=10**30 passed the rules; for a family the plan's memory model does not describe, training
    started, wrote the run's files and stopped with an internal ValueError from numpy. A sample is cropped with room
    for its scaling: augmentation.scaling.range=[0.7, 1000] ran out of memory building the first batch."""
    plan, still = _plan([16, 16, 16]), ["augmentation.rotation.p=0", "augmentation.scaling.p=0"]
    fits = machine_ram_bytes() // (2 * 16**3 * 4)  # 2 channels of float32
    assert resolve_training_config("unet", [f"batch_size={fits}", *still], plan)["batch_size"] == fits
    for batch in (fits + 1, 10**30):
        with pytest.raises(TrainingError, match=rf"^--set batch_size={batch}: {batch} samples of \[16, 16, 16\] voxels \(the "
                           r"patch \[16, 16, 16\] and the room its rotation and scaling take\) of 2 channel\(s\) are .* GiB "
                           r"of float32 input alone, more than this machine's .* GiB of RAM; give a smaller batch_size "
                           r"\(null: the plan's 2\) or augmentation.scaling.range$"):
            resolve_training_config("segresnet", [f"batch_size={batch}", *still], plan)
    zoomed_out = ["augmentation.rotation.p=0", "augmentation.scaling.range=[1, 10]"]  # crops of 160^3 voxels
    with pytest.raises(TrainingError, match=r"samples of \[160, 160, 160\] voxels \(the patch \[16, 16, 16\] and"):
        resolve_training_config("unet", [f"batch_size={fits // 1000 + 1}", *zoomed_out], plan)
    with pytest.raises(TrainingError, match=r"^the plan's batch_size=1000000000000000000000000000000: "):
        resolve_training_config("unet", [], {**plan, "batch_size": 10**30})
    # a batch of the plan's training settings was refused as a --set the user never gave
    with pytest.raises(TrainingError, match=r"^batch_size=1000000000000000000000000000000 \(the plans file's training "
                                            r"settings\): "):
        resolve_training_config("unet", [], {**plan, "training": {"batch_size": 10**30}})


def test_a_zoom_that_leaves_the_patch_no_voxel_is_refused() -> None:
    """The low-resolution simulation rounds extent x zoom: at 0 voxels its resize stopped training with an internal
    ValueError (NaN to integer). The in-plane patch of a 2.5D plan is not shrunk along its first axis."""
    with pytest.raises(TrainingError, match=r"^augmentation.low_resolution.zoom=\[0.03125, 1\]: a zoom of 0.03125 leaves "
                       r"the patch's 16-voxel axis no voxel; give a lowest zoom above 0.03125$"):
        resolve_training_config("unet", ["augmentation.low_resolution.zoom=[0.03125, 1]"], _plan([16, 24, 16]))
    resolve_training_config("unet", ["augmentation.low_resolution.zoom=[0.0313, 1]"], _plan([16, 24, 16]))
    resolve_training_config("unet", ["augmentation.low_resolution.zoom=[0.01, 1]"], _plan([4, 64, 64]))


@pytest.mark.parametrize("override, problem", [
    ("optimizer.lr=[0.1", "ParserError"),
    ("optimizer.lr=" + "[" * 2000 + "]" * 2000, "RecursionError"),  # was an internal RecursionError
])
def test_a_value_yaml_cannot_read_is_refused_as_such(override: str, problem: str) -> None:
    with pytest.raises(TrainingError, match=rf"^--set 'optimizer.lr=\[.*: the value is not valid YAML \({problem}\)$"):
        resolve_config("unet", [override])


@pytest.mark.parametrize("value", ["{1: 2}", "{null: 2}", "{deep_supervision: false, 3.5: 1}"])
def test_network_options_need_names_for_keys(value: str) -> None:
    """YAML reads {1: 2} with an integer key; the network builder took it as a keyword and stopped with an internal
    TypeError (keywords must be strings)."""
    with pytest.raises(TrainingError, match=r"^--set network_options=\{.*\}: option names must be words, not \["):
        resolve_config("unet", [f"network_options={value}"])
    assert resolve_config("unet", ["network_options={deep_supervision: false}"])["network_options"] == {"deep_supervision": False}
