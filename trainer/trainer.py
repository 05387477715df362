"""`OpenSoraTrainer`: paddlenlp's Trainer with the data position, EMA, grad-norm logging and
atomic checkpoints that video diffusion training needs.

What it adds to `paddlenlp.trainer.Trainer`:
- data: an endless, epoch-counting loader over the project's batch samplers (`EpochLoader`);
  its position (epoch, batches trained on) is saved in every checkpoint and restored on resume,
  so a resumed run continues with the next batch without reading the skipped ones;
- the DiT is saved as `dit/` (config.json + model.safetensors, what `--ckpt-path` of the
  inference scripts loads) instead of paddlenlp's `model_state.pdparams`; the frozen VAE and
  text encoder are never saved;
- EMA of the DiT weights (`dit_ema/` beside `dit/` in each checkpoint and in the output folder);
- `grad_norm` (global, before clipping, at the logged step) logged with loss and learning rate, so VisualDL
  (`--report_to visualdl`) plots all three; one console line per logging step;
- checkpoints written to `output_dir/.tmp-checkpoint-N/` and renamed to `checkpoint-N` once
  complete (all ranks finished: barrier), so a killed run never leaves a half-written
  `checkpoint-N`; a run restarted in the same output folder resumes from the last one, and one
  restarted at or past its max_steps trains nothing and writes that checkpoint's DiT as the final
  one (paddlenlp alone would train one step more);
- fp16 / bf16 turned off, with one log line, where Paddle has no CUDA (its CPU build has no
  half-precision kernels), so the GPU command line also runs on the CPU in float32.

Checkpoint folder `checkpoint-N/`:
    dit/                    DiT weights (config.json + model.safetensors)
    dit_ema/                EMA weights, same format (with --ema_decay > 0)
    opensora_state.json     data position and the skipped rows so far
    optimizer*.pdopt        optimizer state (one file per sharding rank with --sharding stage1)
    scheduler.pdparams, trainer_state.json, rng_state*.pth, training_args.bin   (paddlenlp's)
"""
import copy
import json
import logging
import math
import os
import shutil
import time

import paddle
import paddle.distributed as dist
from paddlenlp.trainer import Trainer, TrainerCallback
from paddlenlp.trainer.trainer_callback import PrinterCallback, ProgressCallback, TrainerState
from paddlenlp.trainer.trainer import TRAINER_STATE_NAME
from paddlenlp.trainer.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint

from models.stdit.checkpoint import load_state, read_folder, save_folder
from video_datasets import BucketBatchSampler, VariableVideoTextDataset, VideoBatchSampler, collate_samples

from .features import FeatureDataset, collate_features

STAGING_PREFIX = ".tmp-"  # checkpoints are written under output_dir/.tmp-checkpoint-N first
STATE_NAME = "opensora_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
DIT_DIR, EMA_DIR = "dit", "dit_ema"

_log = logging.getLogger(__name__)


def amp_unavailable_message(args):
    return (
        f"{'--fp16' if args.fp16 else '--bf16'} needs a CUDA build of Paddle (its CPU kernels have no half "
        "precision): AMP is off, this run trains in float32"
    )


class EpochLoader:
    """Batches from a batch sampler, epoch after epoch without end, counting the batches handed out.

    The training loop trains on each batch before asking for the next, so the count is the number
    of batches trained on -- unlike the sampler's own count, which a prefetching DataLoader runs
    ahead of. `state_dict()` is the sampler state at that position.

    Each batch is the collator's dict minus `index` and `skipped`: the skipped rows are merged
    into `dataset.skip_log` here, in the main process (DataLoader workers hold copies).

    Args:
        dataset: a `VideoTextDataset` / `VariableVideoTextDataset` / `FeatureDataset`.
        sampler: its `VideoBatchSampler` / `BucketBatchSampler`.
        collate_fn: `collate_samples` (clips) or `collate_features` (cached features).
        num_workers: DataLoader worker processes.
    """

    def __init__(self, dataset, sampler, collate_fn=collate_samples, num_workers=0):
        self.dataset = dataset
        self.sampler = sampler
        self.loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers)
        self.epoch = 0
        self.steps_in_epoch = 0  # batches of this epoch handed out (= trained on)
        self.samples = 0  # samples handed out by this process (batch sizes differ between buckets)

    def epoch_length(self, epoch=None):
        """Batches this rank gets in an epoch (epochs differ in length with buckets)."""
        if epoch is None or epoch == self.sampler.epoch:
            return len(self.sampler)
        probe = copy.copy(self.sampler)  # shares the row-size cache; keeps this sampler's position
        probe.set_epoch(epoch)
        return len(probe)

    def __iter__(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            for batch in self.loader:
                self.steps_in_epoch += 1
                self.samples += int(batch["num_frames"].shape[0])
                self.dataset.record_skips(batch.pop("skipped", []))
                batch.pop("index")
                yield batch
            if self.steps_in_epoch == 0:
                raise RuntimeError(
                    f"epoch {self.epoch} has no batch: every row was skipped or left out by the buckets "
                    f"({self.dataset.skipped_report(limit=5)})"
                )
            self.epoch += 1
            self.steps_in_epoch = 0

    def state_dict(self):
        state = self.sampler.state_dict(consumed_batches=self.steps_in_epoch)
        state["epoch"] = self.epoch
        return state

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.steps_in_epoch = int(state["batches_consumed"]) // self.sampler.num_replicas


class EMA:
    """Exponential moving average of a layer's weights: trainable parameters are averaged
    (`ema = decay * ema + (1 - decay) * w`), everything else in the state dict is copied.
    Starts as a copy of the layer (Open-Sora's `update_ema` with decay 0 at step 0)."""

    def __init__(self, layer, decay):
        self.decay = float(decay)
        self.trainable = {name for name, p in layer.named_parameters() if not p.stop_gradient}
        self.shadow = {k: v.detach().astype("float32").clone() for k, v in layer.state_dict().items()}

    @paddle.no_grad()
    def update(self, layer):
        for name, value in layer.state_dict().items():
            value = value.detach().astype("float32")
            if name in self.trainable:
                self.shadow[name].scale_(self.decay).add_(value * (1.0 - self.decay))
            else:
                paddle.assign(value, self.shadow[name])

    def state_dict(self):
        return self.shadow

    def save(self, layer, path):
        """Write the average in the layer's folder format (`save_pretrained`: config + safetensors)."""
        return save_folder(self, layer.config, path, layer.model_type)

    def load(self, layer, path):
        """Read an average written by `save`, checking it fits `layer`."""
        _, state = read_folder(path, layer.model_type)
        missing = sorted(set(self.shadow) - set(state))
        if missing or set(state) - set(self.shadow):
            raise ValueError(f"EMA weights {path!r} do not fit the model (missing {missing[:5]}...)")
        for k, v in state.items():
            if list(v.shape) != list(self.shadow[k].shape):
                raise ValueError(f"EMA weights {path!r}: {k} has shape {list(v.shape)}, model {self.shadow[k].shape}")
            self.shadow[k] = paddle.to_tensor(v).astype("float32")


class _TrainingHooks(TrainerCallback):
    """Trainer events: RNG restore at the start, grad norm before the optimizer step, EMA and the
    true epoch after it."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._on_train_begin()

    def on_optimizer_begin(self, args, state, control, **kwargs):
        # only for the steps that are logged: the norm costs a pass over the gradients (and a sync)
        if args.logging_steps > 0 and (state.global_step + 1) % args.logging_steps == 0:
            self.trainer._grad_norm = self.trainer.grad_norm()

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.ema is not None:
            trainer.ema.update(trainer.model.dit)
        loader = trainer._loader
        if loader is not None:
            state.epoch = loader.epoch + loader.steps_in_epoch / max(1, loader.epoch_length())


class ConsoleLogCallback(TrainerCallback):
    """One line per logging step on the first process: step, epoch, loss, lr, grad norm, speed."""

    first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step  # > 0 when resuming

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            parts = [
                f"step {state.global_step}/{state.max_steps}",
                f"epoch {state.epoch:.2f}",
                f"loss {logs['loss']:.4f}",
                f"lr {logs.get('learning_rate', float('nan')):.3e}",
            ]
            if "grad_norm" in logs:
                parts.append(f"grad_norm {logs['grad_norm']:.4f}")
            if "interval_samples_per_second" in logs:
                parts.append(f"{logs['interval_samples_per_second']:.2f} samples/s")
            if "interval_steps_per_second" in logs and logs["interval_steps_per_second"] > 0:
                parts.append(f"{1.0 / logs['interval_steps_per_second']:.2f} s/step")
            print(" | ".join(parts), flush=True)
        elif "train_runtime" in logs:
            print(
                f"trained steps {self.first_step + 1}-{state.global_step} in {logs['train_runtime']:.1f} s "
                f"({logs.get('train_samples_per_second', 0.0):.2f} samples/s)",
                flush=True,
            )


class OpenSoraTrainer(Trainer):
    """paddlenlp Trainer for `OpenSoraTrainModel` (see the module docstring).

    Args:
        model: an `OpenSoraTrainModel`.
        args: paddlenlp `TrainingArguments`. `per_device_train_batch_size` is the batch size of the
            fixed-size dataset; with a bucket sampler the bucket config sets batch sizes.
        train_dataset: `VideoTextDataset`, `VariableVideoTextDataset` or `FeatureDataset` (cached
            latents and text features, see `trainer.features`).
        bucket: the `Bucket` of a `VariableVideoTextDataset` (required with it, unused otherwise).
        ema_decay: EMA decay of the DiT weights; 0 turns the EMA off.
        sampler_group_size: rows kept together in one batch (`VideoBatchSampler` group_size; e.g. 2
            for swapped pairs); fixed-size and cached datasets only.

    Raises:
        ValueError: an option this trainer does not support (tensor / pipeline parallelism,
            unified or sharded-model checkpoints), or sampler_group_size > 1 with buckets.
    """

    def __init__(self, model, args, train_dataset, bucket=None, ema_decay=0.0, sampler_group_size=1, **kwargs):
        unsupported = {
            "--tensor_parallel_degree > 1": args.tensor_parallel_degree > 1,
            "--pipeline_parallel_degree > 1": args.pipeline_parallel_degree > 1,
            "--unified_checkpoint": bool(args.unified_checkpoint),
            "--save_sharded_model / --load_sharded_model": bool(args.save_sharded_model or args.load_sharded_model),
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"OpenSoraTrainer does not support {', '.join(bad)} (the DiT is saved whole as dit/)")
        if (args.fp16 or args.bf16) and not paddle.is_compiled_with_cuda():
            _log.warning(amp_unavailable_message(args))
            args.fp16 = args.bf16 = False
        # The data position is restored by EpochLoader, not by re-reading the trained batches:
        # paddlenlp's skipping is turned off (`--ignore_data_skip` is honoured in `train`).
        self._restore_data_position = not args.ignore_data_skip
        args.ignore_data_skip = True
        if (bucket is not None) != isinstance(train_dataset, VariableVideoTextDataset):
            raise ValueError("give a Bucket with a VariableVideoTextDataset, and only with it")
        if bucket is not None and sampler_group_size != 1:
            raise ValueError(f"--sampler_group_size {sampler_group_size} needs a fixed-size or cached dataset, not buckets")
        self.bucket = bucket
        self.sampler_group_size = sampler_group_size
        self.ema_decay = float(ema_decay)
        self.ema = None
        self._loader = None
        self._resume_from = None
        self._grad_norm = None
        self._samples_logged = 0
        self._checkpoint_root = None  # output_dir while paddlenlp writes into a staging folder
        collate = collate_features if isinstance(train_dataset, FeatureDataset) else collate_samples
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=collate, **kwargs)
        model.dit.enable_recompute(bool(args.recompute))
        for quiet in (ProgressCallback, PrinterCallback):
            self.pop_callback(quiet)
        self.add_callback(_TrainingHooks(self))
        self.add_callback(ConsoleLogCallback())

    # -- data ----------------------------------------------------------------------------------

    def get_train_dataloader(self):
        if self._loader is None:
            args = self.args
            common = dict(num_replicas=args.dataset_world_size, rank=args.dataset_rank, seed=args.seed,
                          drop_last=args.dataloader_drop_last)
            if self.bucket is not None:
                sampler = BucketBatchSampler(self.train_dataset, self.bucket, **common)
            else:
                sampler = VideoBatchSampler(self.train_dataset, args.per_device_train_batch_size,
                                            group_size=self.sampler_group_size, **common)
            self._loader = EpochLoader(self.train_dataset, sampler, self.data_collator, args.dataloader_num_workers)
        return self._loader

    def _epochs_to_steps(self, num_train_epochs):
        """Optimizer steps in `num_train_epochs` epochs of the first epoch's length (with buckets
        the epochs differ slightly in length: the keep-probability draws change with the epoch)."""
        batches = num_train_epochs * self.get_train_dataloader().epoch_length(0)
        return max(1, math.ceil(batches / self.args.gradient_accumulation_steps))

    # -- train ---------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, ignore_keys_for_eval=None):
        """Train (`max_steps`, or `num_train_epochs` turned into steps); resume from a
        checkpoint folder or, with True, from the last complete one in `output_dir`. Writes the
        final `output_dir/dit` (and `dit_ema`)."""
        args = self.args
        self._remove_staging_folders()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint-N folder to resume from in {args.output_dir!r}")
        elif resume_from_checkpoint in (False, ""):
            resume_from_checkpoint = None
        if resume_from_checkpoint is not None and not os.path.isdir(resume_from_checkpoint):
            raise FileNotFoundError(f"checkpoint folder not found: {resume_from_checkpoint!r}")
        self._resume_from = resume_from_checkpoint
        loader = self.get_train_dataloader()
        if resume_from_checkpoint is not None:
            state = self._read_state(resume_from_checkpoint)
            if self._restore_data_position:
                loader.load_state_dict(state["data"])
            self.train_dataset.record_skips(state.get("skipped", []))
            _log.info("resuming from %s at epoch %d, batch %d", resume_from_checkpoint, loader.epoch, loader.steps_in_epoch)
        if args.max_steps <= 0:
            args.max_steps = self._epochs_to_steps(args.num_train_epochs)
        if resume_from_checkpoint is not None:
            done = self._checkpoint_step(resume_from_checkpoint)
            if done >= args.max_steps:  # paddlenlp would still train one step past max_steps
                return self._export_finished(resume_from_checkpoint, done)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, ignore_keys_for_eval=ignore_keys_for_eval)
        self.save_final()
        return output

    def _checkpoint_step(self, checkpoint):
        """The global step a checkpoint folder was saved at (its trainer_state.json)."""
        path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {checkpoint!r} is not a complete checkpoint")
        return TrainerState.load_from_json(path).global_step

    def _export_finished(self, checkpoint, step):
        """A run resumed at or past max_steps trains nothing: the checkpoint's DiT (and EMA)
        become the final `output_dir/dit` (and `dit_ema`), unchanged."""
        _log.info("%s is at step %d, max_steps is %d: nothing to train; writing its DiT", checkpoint, step,
                  self.args.max_steps)
        self._load_from_checkpoint(checkpoint)
        self._build_ema(checkpoint)
        self.save_final()
        return TrainOutput(step, 0.0, {})

    def _on_train_begin(self):
        """After the weights, optimizer and trainer state are loaded: the RNG state of the
        checkpoint (paddlenlp restores it only when it skips batches itself) and the EMA."""
        if self._resume_from is not None:
            self._load_rng_state(self._resume_from)
        self._build_ema(self._resume_from)

    def _build_ema(self, checkpoint=None):
        """The EMA of the DiT (with ema_decay > 0), loaded from `checkpoint/dit_ema` when given."""
        if self.ema_decay <= 0:
            return
        self.ema = EMA(self.model.dit, self.ema_decay)
        if checkpoint is not None:
            ema_path = os.path.join(checkpoint, EMA_DIR)
            if os.path.isdir(ema_path):
                self.ema.load(self.model.dit, ema_path)
            else:
                _log.warning("%s not found: the EMA restarts from the current weights", ema_path)

    def grad_norm(self):
        """Global L2 norm of the DiT's gradients (before clipping, unscaled), as a float.

        With `--sharding stage1` each rank holds the reduced gradients of the parameters it owns:
        the squared norms are summed over the sharding group. (With fp16 grad scaling and sharding
        -- GPU only -- the gradients are not reduced yet when this runs: the value is then the norm
        of this rank's local gradients.)"""
        inner = getattr(self.optimizer, "_inner_opt", None)
        owner = getattr(inner, "_param2rank", None)
        params = [p for p in self.model.dit.parameters() if not p.stop_gradient and p.grad is not None]
        sharded = owner is not None and not self.do_grad_scaling
        if sharded:
            params = [p for p in params if owner.get(p.name) == inner._sharding_rank]
        total = paddle.zeros([1], dtype="float32")
        for p in params:
            total += (p.grad.astype("float32") ** 2).sum()
        if sharded:
            dist.all_reduce(total, group=inner._hcg.get_sharding_parallel_group())
        norm = float(total.sqrt())
        if self.do_grad_scaling:
            norm /= float(self.scaler._scale)
        return norm

    def log(self, logs, **kwargs):
        """Add grad_norm; count samples/s from the batches actually trained on (paddlenlp assumes
        every batch has per_device_train_batch_size samples, which buckets break)."""
        if "loss" in logs and self._grad_norm is not None:
            logs["grad_norm"] = round(self._grad_norm, 6)
            self._grad_norm = None
        runtime_key = "interval_runtime" if "interval_runtime" in logs else "train_runtime"
        if self._loader is not None and runtime_key in logs:
            seen = self._samples_all_ranks()
            since = self._samples_logged if runtime_key == "interval_runtime" else 0
            self._samples_logged = seen
            key = "interval_samples_per_second" if runtime_key == "interval_runtime" else "train_samples_per_second"
            logs[key] = round((seen - since) / max(logs[runtime_key], 1e-9), 4)
        super().log(logs, **kwargs)

    def _samples_all_ranks(self):
        """Samples trained on by all processes since this process started (collective)."""
        n = paddle.to_tensor([self._loader.samples], dtype="int64")
        if self.args.world_size > 1:
            dist.all_reduce(n)
        return int(n)

    # -- checkpoints ---------------------------------------------------------------------------

    def _barrier(self):
        if self.args.world_size > 1:
            dist.barrier()

    def _remove_staging_folders(self):
        """Delete what a killed run left half-written (staging folders are never resumed from)."""
        root = self.args.output_dir
        if self.args.should_save and os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                if name.startswith(STAGING_PREFIX) or (name.startswith(PREFIX_CHECKPOINT_DIR) and name.endswith(".old")):
                    _log.warning("removing the incomplete checkpoint %s", os.path.join(root, name))
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        self._barrier()

    def _save(self, output_dir=None, state_dict=None, merge_tensor_parallel=False):
        """The DiT as `dit/` (loadable by `--ckpt-path`); the VAE and text encoder are never saved."""
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if self.args.should_save:
            self.model.dit.save_pretrained(os.path.join(output_dir, DIT_DIR))
            args = copy.copy(self.args)
            args.output_dir = self._checkpoint_root or self.args.output_dir
            paddle.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        """Load `checkpoint/dit` into the DiT (every rank reads it)."""
        if not resume_from_checkpoint:
            return
        path = os.path.join(resume_from_checkpoint, DIT_DIR)
        _, state = read_folder(path, self.model.dit.model_type)
        load_state(self.model.dit, state, repr(path))

    def _save_checkpoint(self, model, metrics=None):
        """paddlenlp's checkpoint plus the data position and EMA, written to a staging folder and
        renamed to `checkpoint-N` once every rank has finished writing."""
        root = self.args.output_dir
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(root, STAGING_PREFIX + name)
        staged, final = os.path.join(staging_root, name), os.path.join(root, name)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
        skipped = self._gather_skipped()  # collective: every rank
        self._barrier()
        self._checkpoint_root = root
        self.args.output_dir = staging_root  # paddlenlp writes <output_dir>/checkpoint-N
        try:
            super()._save_checkpoint(model, metrics=metrics)
        finally:
            self.args.output_dir = root
            self._checkpoint_root = None
        if self.args.should_save:
            with open(os.path.join(staged, STATE_NAME), "w") as f:
                json.dump({"data": self._loader.state_dict(), "skipped": skipped}, f, indent=1)
            if self.ema is not None:
                self.ema.save(self.model.dit, os.path.join(staged, EMA_DIR))
        self._barrier()  # every rank's optimizer shard is written
        if self.args.should_save:
            if os.path.isdir(final):  # e.g. a rerun from an earlier checkpoint
                shutil.rmtree(final + ".old", ignore_errors=True)
                os.rename(final, final + ".old")
                os.rename(staged, final)
                shutil.rmtree(final + ".old")
            else:
                os.rename(staged, final)
            shutil.rmtree(staging_root)
            self._rotate_checkpoints(use_mtime=False, output_dir=root)
            _log.info("saved %s", final)
        self._barrier()

    def _read_state(self, checkpoint):
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {checkpoint!r} was not written by OpenSoraTrainer")
        with open(path) as f:
            return json.load(f)

    def _gather_skipped(self):
        """[[index, path, reason], ...] of the rows every rank has skipped (collective)."""
        mine = [[i, p, r] for i, (p, r) in self.train_dataset.skip_log.entries.items()]
        if self.args.world_size <= 1:
            return mine
        gathered = []
        dist.all_gather_object(gathered, mine)
        merged = {}
        for entries in gathered:
            for i, p, r in entries:
                merged.setdefault(int(i), [int(i), p, r])
        return [merged[i] for i in sorted(merged)]

    def skipped_report(self, limit=20):
        """The skipped rows of all ranks (collective: call it on every rank)."""
        self.train_dataset.record_skips(self._gather_skipped())
        return self.train_dataset.skipped_report(limit)

    def save_final(self):
        """`output_dir/dit` (and `output_dir/dit_ema`): the trained DiT for `--ckpt-path`."""
        if self.args.should_save:
            start = time.time()
            dit = self.model.dit
            dit.save_pretrained(os.path.join(self.args.output_dir, DIT_DIR))
            if self.ema is not None:
                self.ema.save(dit, os.path.join(self.args.output_dir, EMA_DIR))
            _log.info("wrote %s in %.1f s", os.path.join(self.args.output_dir, DIT_DIR), time.time() - start)
        self._barrier()
