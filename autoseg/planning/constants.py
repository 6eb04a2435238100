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
# SGD with (Nesterov) momentum keeps one buffer per parameter (reference §1.5).
OPTIMIZER_BUFFERS_PER_PARAMETER = 1
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
# Share of the budget left to the training loop; the rest is for the final sliding-window
# validation, checkpoints and start-up (autoseg).
BUDGET_TRAINING_SHARE = 0.85
# reference §4: on this CPU nnU-Net's loop takes 0.63 s per iteration for 0.44 s of compute (data
# loading competes for the same cores). On CUDA, loading runs beside the GPU.
CPU_LOOP_OVERHEAD = 0.63 / 0.44
# reference §4: a 16-128 feature plan reached Dice 0.86 after about 2500 iterations (26 min at
# 0.63 s); the budget planner keeps the largest network that still gets at least this many.
MIN_BUDGET_ITERATIONS = 2500
# Below that, the memory-fitted patch is still kept (at the narrowest width) while it affords this
# many: on Dataset004 a 16x24x16 patch trained for 2500 iterations reached Dice 0.2 where the fitted
# 40x56x40 patch reached pseudo-Dice 0.83 after 1000 (autoseg's measurements, docs/planning.md).
MIN_ITERATIONS_FULL_PATCH = 1000
# Widths (first-stage features) the budget planner tries, widest first; max features scale along.
# Not 8: on the demo (Dataset004, 7 min) an 8-64 network reached pseudo-Dice 0.31 after 750
# iterations where 16-128 had 0.58 after 500 in the 30-minute run (autoseg's measurements).
BUDGET_WIDTHS = (32, 16)
# Timing probe: a few steps of one network of the planned family at this size per axis (3D / 2D),
# about the size of small-organ patches, where CPU convolutions reach most of their throughput.
TIMING_PROBE_SIZE = {2: 160, 3: 40}
TIMING_PROBE_WIDTH = 16
TIMING_WARMUP_STEPS = 1
TIMING_MEASURED_STEPS = 2
