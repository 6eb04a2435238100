"""Every threshold the planner uses, named, with where it comes from.

``reference §x`` is /work/shared/docs/reference.md; values marked *autoseg* are our own choices and
are explained in docs/planning.md.
"""

from __future__ import annotations

PLANS_VERSION = 1
DEFAULT_PLANS_NAME = "autosegPlans"

# --- target spacing and transpose (reference §1.3) ---------------------------------------------
# An axis is "anisotropic" when its spacing exceeds this many times every other axis' spacing ...
ANISOTROPY_THRESHOLD = 3.0
# ... and its median size times this factor is below the smallest other median size.
ANISOTROPY_SIZE_FACTOR = 3.0
# Then the coarse axis takes this percentile of its per-case spacings (never below the other axes).
ANISOTROPIC_SPACING_PERCENTILE = 10.0

# --- normalization (reference §1.3) -------------------------------------------------------------
CT_CHANNEL_NAME = "ct"
NO_NORMALIZATION_NAMES = ("nonorm", "none")
NNUNET_SCHEME_NAMES = ("rescale_to_0_1", "rgb_to_0_1")  # nnU-Net v2's other channel names with their own scheme
# z-score inside the nonzero mask when cropping removed more than 25% of the image, i.e. the median
# relative size after cropping is below 0.75.
USE_MASK_RELATIVE_SIZE = 0.75

# --- resampling (reference §1.3) ----------------------------------------------------------------
IMAGE_RESAMPLING_ORDER = 3
LABEL_RESAMPLING_ORDER = 1
OUT_OF_PLANE_ORDER = 0
SEPARATE_Z_ANISOTROPY_THRESHOLD = 3.0

# --- patch and topology (reference §1.3) --------------------------------------------------------
# The initial patch has the volume of a 256^3 (3D) or 2048^2 (2D) cube, shaped like 1/spacing.
REFERENCE_PATCH_EDGE = {2: 2048, 3: 256}
# A feature map is never pooled below this many voxels along an axis.
MIN_FEATURE_MAP_SIZE = 4
# An axis is pooled (and gets the full kernel) only while its spacing is within 2x of the finest.
POOLING_SPACING_RATIO = 2.0
# When only one axis can still be pooled, it must have at least 3 x MIN_FEATURE_MAP_SIZE voxels
# (nnU-Net v2's get_pool_and_conv_props: a 2-stride on 8 voxels of one axis alone buys little).
SINGLE_AXIS_POOL_MIN_SIZE = 3 * MIN_FEATURE_MAP_SIZE
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
POOLING_STRIDE = 2
# Attention windows (Swin-UNet, nnFormer) must tile the patch. The family's window is kept while the patch
# it rounds to is at most this many times the wanted one per axis (Swin-UNet's 7 turns 512 into 672); past
# it the window shrinks, to no less than half, to the one that rounds least (a 64-pixel axis became 112).
WINDOW_ROUNDING_MAX_RATIO = 4 / 3

# --- batch (reference §1.3) ---------------------------------------------------------------------
MIN_BATCH_SIZE = 2
# One batch covers at most 5% of the voxels of the whole (preprocessed) dataset.
MAX_BATCH_DATASET_FRACTION = 0.05

# --- configurations (reference §1.3) ------------------------------------------------------------
# 3d_lowres is planned when the fullres patch covers less than 25% of the median image ...
LOWRES_TRIGGER_COVERAGE = 0.25
# ... by growing the spacing 3% per step until it does ...
LOWRES_SPACING_STEP = 1.03
# ... and dropped when it does not save at least 2x voxels over fullres.
LOWRES_MIN_VOXEL_RATIO = 2.0
# Anisotropic data (max/min spacing above 2) grows only the finer axes first.
LOWRES_ANISOTROPIC_RATIO = 2.0

# --- memory budget (autoseg) --------------------------------------------------------------------
# Fraction of the device memory the predicted (weights + gradients + momentum + saved activations)
# may use: the rest covers what the saved-tensor count does not see (transient gradients of
# activations during backward, allocator fragmentation, cuDNN workspaces).
GPU_MEMORY_USABLE_FRACTION = 0.8
# Without a GPU, training may use this fraction of the machine's total RAM (the rest is for data
# loading workers, the OS and other processes).
CPU_MEMORY_USABLE_FRACTION = 0.25
# Optimizer state per parameter: SGD with (Nesterov) momentum keeps one buffer (reference §1.5), Adam
# and AdamW two (the first and second moments). Plans are sized for SGD; a plan that trains with
# another optimizer (planning/short_schedule.py) and train's device check count its own.
OPTIMIZER_BUFFERS_PER_PARAMETER = {"sgd": 1, "adam": 2, "adamw": 2}
# The two calibration inputs are this many times the network's total stride per axis.
MEMORY_CALIBRATION_MULTIPLES = (2, 3)
# Calibration inputs up to this size run on real CPU tensors (faster than the meta device's ~1 s
# first-use cost: 0.2 s for a 4-stage U-Net at 24^3); larger ones on the meta device (autoseg).
CPU_CALIBRATION_MAX_VOXELS = 48**3

# --- training schedule and compute budget -------------------------------------------------------
# reference §1.5: 1000 epochs x 250 iterations.
ITERATIONS_PER_EPOCH = 250
DEFAULT_NUM_EPOCHS = 1000
MAX_ITERATIONS = ITERATIONS_PER_EPOCH * DEFAULT_NUM_EPOCHS
# Without a GPU the plan is sized for this compute budget per fold (autoseg: one night plus margin).
DEFAULT_CPU_BUDGET_SECONDS = 12 * 3600.0
# reference §1.5: 50 validation iterations (forward only, about 1/3 of a training step) per epoch.
VALIDATION_COST_FACTOR = 1.0 + 50 / ITERATIONS_PER_EPOCH / 3
# autoseg's own loop on a CPU: the measured compute plus data loading on the same cores. On a 2-core AMD
# EPYC (float32, 1 data worker, docs/benchmarks.md "Reading the in-situ runs") it ran 1.07 x compute
# + 0.016 s per iteration for patches of 16x24x16 to 32x48x32, ACDC's 6x128x96 1.1 x compute; the Xeon's
# bf16 step, where augmentation weighs twice as much, 1.16 x compute. (The first constants, 0.63/0.44 and
# 0.1 s, were nnU-Net's loop on a loaded machine and overstated autoseg's 1.4-2x.)
CPU_LOOP_OVERHEAD = 1.15
CPU_LOOP_SECONDS = 0.03

# --- the whole run in the budget (autoseg; docs/planning.md, "The whole run fits the budget") ------
# Share of the budget kept free for jitter (the training config's budget_safety_fraction).
BUDGET_SAFETY_FRACTION = 0.03
# Start-up of `autoseg train`: imports, network, data workers, the first iterations' allocations
# (autoseg's CPU runs: 5-12 s).
STARTUP_SECONDS = 10.0
# The final validation's sliding window: tiles half a patch apart (reference §1.4), mirrored over
# every axis (2^dims passes) unless the plan turns test-time augmentation off for validation.
VALIDATION_STEP = 0.5
# The sliding window's forward passes may take at most this share of the budget; beyond it the plan
# validates without mirroring, and candidates still beyond it are not viable (issue 14: 8 mirrorings
# of a 12x16x20 window over whole brains were predicted at 28 hours of a 3-minute budget).
VALIDATION_MAX_SHARE = 0.15
# The plan mirrors the final validation only when the mirrored passes, priced from the probe's rate,
# fit the share with this margin: training re-decides from its own timing of the real network's tiles,
# which came out 1.16x the probe's price on Hippocampus at 5 minutes (9.4 against 8.1 ms per tile,
# 2026-12-04), and a plan at the edge of the share said mirrored where the run then validated unmirrored.
VALIDATION_PLAN_MARGIN = 1.25
# Export of one validation case: a fixed cost, writing and scoring per input voxel, restoring each
# output channel to the input grid, and resampling it when the spacing changed. The first constants
# (0.2 s, 1.2 us, 50 ns, 150 ns) came from whole validations under load 9 on 2 cores and overstated a
# quiet machine 6-7x: the dice-against-budget benchmark's ACDC 5-minute run ended 12% early. Measured
# on the quiet 2-core machine (validation with and without mirroring, the export = the unmirrored time
# less one eighth of the mirrored forward passes; model loading included): Dataset004 42 cases at
# 1.41 mm 2.2 s (0.052 s per case of 63k voxels), ACDC 32 cases at 6.25 mm 5.6 s (0.175 s per case of
# 550k voxels, 4 outputs), BraTS 2 cases of 155x240x240 at 4 mm 4.7 s (2.35 s per case, 3 regions):
# about 0.035 s + 260 ns per voxel. The constants are those measurements x1.5 (a loaded machine is
# slower; the validation's pace guard then drops mirroring).
EXPORT_SECONDS_PER_CASE = 0.05
EXPORT_SECONDS_PER_VOXEL = 2.5e-7
EXPORT_SECONDS_PER_VOXEL_CHANNEL = 1e-8
EXPORT_RESAMPLE_SECONDS_PER_VOXEL_CHANNEL = 4e-8
# Preprocessing of one case (accounting.preprocess_case_seconds): a fixed cost, reading, cropping,
# normalising and writing per voxel and channel (the label map counted as one), and where the spacing
# changes, per image channel the spline prefilter (per padded voxel and axis) and the interpolation
# taps that preprocessing.resampling.resampling_work counts, plus each class but the most frequent per
# output voxel. Fitted (least squares on relative error) to 100 cases timed one by one in one process on
# the quiet 2-core AMD EPYC: Hippocampus, ACDC, BraTS-mini, DRIVE (2d) and a synthetic 113x384x384 CT,
# each at its own spacing, 2x coarser, 0.7x finer and coarser along one axis; the fit is within 0.85-1.27x
# of each case except first-call warm-ups (19 ms + 24 ns per voxel-channel + 3.8 ns per prefilter
# voxel-axis + 6.5 ns per tap + 18 ns per label voxel). The constants are the fit x1.25 (a loaded machine
# is slower; the trainer counts the actual time). The earlier per-input-voxel constants, set under
# load 9, predicted the CT's 16 cases at 82 s where they took 14 s, and missed upsampling's cost 2x.
PREPROCESS_SECONDS_PER_CASE = 0.025
PREPROCESS_SECONDS_PER_VOXEL_CHANNEL = 3e-8
PREFILTER_SECONDS_PER_VOXEL = 5e-9
INTERPOLATION_SECONDS_PER_TAP = 8e-9
RESAMPLE_LABEL_SECONDS_PER_VOXEL_LABEL = 2.3e-8
# The fixed start-up of `autoseg preprocess`, paid once however few the cases: the interpreter and its
# imports (SimpleITK, scipy, torch), reading dataset.json and the plans, checking the stored cases and
# ground truths, and starting the process pool. Unmodelled, 5 Hippocampus cases were predicted at 0.1 s
# where the command took 4.6-9.4 s (seven runs of 2026-12-07, 2-core AMD EPYC shared with other work,
# load average 6.3-6.8; its own timing record, pool and cases only, 0.5-1.2 s); with every case already
# stored it took 4.8-6.1 s (1.6-2.1 s of CPU), the imports alone 2.4-3.2 s.
PREPROCESS_STARTUP_SECONDS = 5.0
# Checkpoints: a fixed cost per file plus the fp32 weights and momentum at this disk speed; at each
# epoch end the latest checkpoint and, about every other epoch, a new best one are written.
CHECKPOINT_SECONDS_PER_FILE = 0.05
CHECKPOINT_BYTES_PER_SECOND = 200e6
CHECKPOINT_FILES_PER_EPOCH = 1.5

# --- choosing resolution, context and iterations under a budget (autoseg) ------------------------
# Context rule: a candidate's patch must cover, along every axis, at least this share of the median
# image at its spacing: 0.25^(1/dims) (0.63 in 3D, 0.5 in 2D), i.e. reference §1.3's 25% coverage rule
# for 3d_lowres applied to each axis, so no axis is starved. On Dataset004 a 16x24x16 patch (0.44-0.48
# of the median 36x50x35) reached Dice 0.2 after 2500 iterations, the whole-image 40x56x40 patch 0.83.
CONTEXT_MIN_VOLUME_SHARE = 0.25
# Spacing candidates: the target spacing, then coarser by this factor per step (half the voxels per
# step in 2D, a third in 3D: finer steps cost a memory calibration each and changed no choice tried) (finer axes first
# while the spacing is anisotropic, as 3d_lowres grows it), while every axis keeps at least
# SPACING_LADDER_MIN_EDGE voxels of the median image and no axis is coarsened more than 4x
# (TotalSegmentator's coarsest model, --fastest, is 6 mm for 1.5 mm data).
SPACING_LADDER_STEP = 2 ** 0.5
SPACING_LADDER_MAX_FACTOR = 4.0
SPACING_LADDER_MIN_EDGE = 16
# The ladder's spacings are rounded to this many decimals (to a 1e-10 mm grid): repeated sqrt(2) steps left
# float noise (2.0000000000000004 mm) that moved resampled shapes at exact halves by a voxel.
SPACING_DECIMALS = 10
# Thin structures (budget_search._keep_thin_structures): a 2D budget recipe keeps the typical structure's
# thickness (fingerprint/thickness.py; the median over the targets, so one thin target among thick ones
# does not force every model to full resolution) at least this many voxels across every coarsened axis,
# about two samples per width (Nyquist); a 3D recipe only notes it. On DRIVE (vessels 3.2 px) the 5-minute
# plan coarsened 4x for context and reached vessel Dice 0.653 where the rule's 1.41 mm reached 0.757 and
# the native spacing 0.777 (one run each, docs/benchmarks.md).
MIN_STRUCTURE_VOXELS = 2.0
# Iterations before resolution (budget_search._coarsest_drawn): when the chosen 3D budget recipe affords
# fewer than MIN_BUDGET_ITERATIONS, the planner goes on to the coarsest spacing of the ladder at which
# the typical structure keeps this many voxels across and takes there the patch (within the context
# rule) that trains the most iterations. On ACDC (typical structure 12.9 mm; one run each, same host, docs/benchmarks.md):
# at 30 minutes the finest viable 3.125 mm (4.1 voxels, 1962 iterations) reached Dice 0.697 and
# 4.42 mm with the smallest context patch 6x64x48 (2.9 voxels, 8432 iterations) 0.829; at 10 minutes
# 4.42 mm reached 0.739 and 6.25 mm (2.1 voxels) 0.682, so the threshold lies between 2.1 and 2.9. At
# that spacing and patch Dice climbed 0.72 -> 0.78 -> 0.83 from 1941 to 4780 to 8432 iterations (runs
# on two hosts), and 2.21 mm trained 1148 iterations and reached 0.66: iterations, not resolution or
# context, were what ACDC lacked.
COARSE_STRUCTURE_VOXELS = 2.5
# A class is at risk of vanishing at a spacing a budget coarsened to when its smallest case there holds fewer
# voxels than a structure MIN_STRUCTURE_VOXELS across every axis (8 in 3D, 4 in 2D), or when its median thickness
# is under MIN_STRUCTURE_VOXELS voxels at the finest axis there: the plan names each such class
# (budget_search.small_class_notes); the typical structure's rule above judges the median target only.
# Robust recipes: the recipe (spacing, patch, network, batch) is chosen at the *recipe speed*: a
# measured speed up to 2.83x slower or 8x faster than a reference speed counts as the reference, and
# one beyond counts as what exceeds that factor (continuous, no jump at the edge); only the iteration
# count follows the measurement. Reference speeds: a CPU thread of the development machine ran the 3D
# probe at 0.020-0.062 s per GFLOP under varying load (planning caches of several sessions; 0.025
# taken), a GPU is taken at 10 TFLOP/s. History: a grid of discrete speeds (factor 4, then 8) put
# hosts on its edge. On 2026-12-03 a quiet AMD EPYC host planned Hippocampus at 5 minutes at 1.41 mm
# in one run and at 2 mm in the next (2.02x, grid of 4), and with the grid of 8 the same kind of host,
# timing 2.88x that evening, planned the 10-minute budget at 2 mm with a 2-stage 16-32 network instead
# of 1 mm and 24x36x24: a step of 8x in assumed speed for a change in measured speed of a few percent.
RECIPE_SPEED_TOLERANCE_SLOWER = 2 * 2**0.5
# The band is wider on the fast side: a faster machine only trains more iterations than the recipe was
# chosen for (the floors still hold), so the band there only has to reach past every host seen. CPUs
# with native bf16 time the probe 3.0-3.5x faster than the reference per thread (AMD EPYC with
# avx512_bf16, 2026-12-04), at the 2.83x edge: two quiet `autoseg demo` runs on one such host planned
# 24x32x24 and 24x36x24 (held-out Dice 0.876 and 0.882) as its timing moved by 14%.
RECIPE_SPEED_TOLERANCE_FASTER = 8.0
REFERENCE_SECONDS_PER_GFLOP = {"cpu": 0.025, "cuda": 1e-4}
# reference §4: a 16-128 feature plan reached Dice 0.86 after about 2500 iterations (26 min at
# 0.63 s); the budget planner keeps the largest network that still gets at least this many.
MIN_BUDGET_ITERATIONS = 2500
# Iteration floor: a candidate is viable only if it affords this many iterations at the recipe speed
# (so at least half of them at a real speed up to 2x slower), counted with the loop model above. The
# first floor, 1000 in the units of the old loop model (which overstated autoseg's loop 1.4-2x), was
# 1400-2000 real iterations; 1500 keeps that guarantee. Dice still climbs well past 1000 iterations on
# every shared dataset (one run each, docs/benchmarks.md): BraTS at 4 mm 0.60 after 972 and 0.69 after
# 2676, ACDC at 4.42 mm 0.72 after 1941 and 0.78 after 4780, while ACDC at 2.21 mm trained 1148 and
# reached 0.66; on Dataset004 a 16x24x16 patch reached only 0.2 after 2500 (the context rule).
ITERATION_FLOOR = 1500
# A 3D plan whose budget affords at most this many iterations *at the recipe speed* trains with its
# family's short-schedule settings (planning/short_schedule.py; the U-Net: AdamW at 1e-3); longer
# schedules keep nnU-Net's SGD. Counted at the recipe speed like the recipe itself, so a faster host or
# a noisy measurement changes the iterations, not the optimizer (counted at the measured speed, the
# Xeon with AMX planned ACDC's 30-minute recipe at 23,594 iterations, over the old limit of 20,000, and
# trained it with SGD where the AMD EPYC's plan, 17,750, had AdamW). The longest schedule measured is
# that plan: 5,213 at the recipe speed; AdamW 0.870 against SGD's 0.862 with 21,593 trained on the AMD
# EPYC, 0.878 against 0.874-0.876 with 38,324 on the Xeon (docs/benchmarks.md, "AdamW for short
# schedules"). The old limit was about 5,900 in these units on the host it was measured on.
SHORT_SCHEDULE_MAX_ITERATIONS = 6_000
# Widths (first-stage features) the budget planner tries, widest first; max features scale along.
# Not 8: on the demo (Dataset004, 7 min) an 8-64 network reached pseudo-Dice 0.31 after 750
# iterations where 16-128 had 0.58 after 500 in the 30-minute run (autoseg's measurements).
BUDGET_WIDTHS = (32, 16)
# Timing probe: a few steps of one network of the planned family at this size per axis (3D / 2D),
# about the size of small-organ patches, where CPU convolutions reach most of their throughput.
TIMING_PROBE_SIZE = {2: 160, 3: 40}
TIMING_PROBE_WIDTH = 16
TIMING_WARMUP_STEPS = 1
# The fastest of 5 steps (the least disturbed by other load) gives the rate.
TIMING_MEASURED_STEPS = 5

# A case that would hold more voxels than this at the planned spacing (8 GiB per float32 channel) has a
# voxel size that cannot be real (microns or 1e6 mm in a header): plan and predict refuse it instead of
# filling the memory (preprocess reported only "out of memory").
MAX_RESAMPLED_VOXELS = 2**31
# ... and one that the planned spacing would shrink more than this along an axis (a header in metres or
# cm among millimetres) would be trained as a few voxels: refused too (real datasets differ ~10x at most).
MAX_CASE_DOWNSAMPLING = 100.0
