"""Training: what `train_vae.py` and `train_dalle.py` run.

    config.py       TrainConfig (optim, loop, compute, outputs, task): every setting of a run, checked once
    task_config.py  VaeConfig, DalleConfig: the settings of each task
    run.py          run(config, build_task): the entry point of both scripts
    tasks.py        Task; vae_task, dalle_task: model, data, loss and sample images of each script
    trainer.py      Trainer: the loop (gradient accumulation, non-finite steps, logging, checkpoints)
    parallel.py     ParallelModel: single process, DDP or FSDP2, optimizer state by parameter names
    state.py        Progress, RunState: what a training-state file holds and exact resume
    checkpoints.py  CheckpointManager: a run folder's checkpoint pairs, `latest`, rotation
    optim.py        AdamW and the learning-rate schedule (LRSchedule: per step, or lr_decay per epoch)
    schedules.py    DALLE-pytorch's schedules as pure functions (VAE temperature and lr cadence, plateau)
    backends.py     DALLE-pytorch's DeepSpeed runs on DDP: the global batch split over the processes
    flops.py        flops_profiler: the FLOPs of one training step
    precision.py    autocast and what each device supports
    rng.py          seeding, capturing and restoring every RNG
    datasets.py     TextImageDataset, ImageFolder, the bad-sample policy, image transforms
    folder_index.py the cached scan of a caption/image folder
    webdataset.py   batches from WebDataset shards
    encode.py       encode_dataset: a dataset's codes, once (dalle-encode)
    code_shards.py  the code-shard format: manifest, shard writer, CodeDataset, code_loader (--codes)
    loader.py       EpochData: batches of an epoch, resumable; collation, devices
    distributed.py  DistEnv, init_distributed (torchrun)
    runlog.py       RunLogger (JSONL, console, TensorBoard, W&B), the run summary

The scripts' flags and their mapping to TrainConfig: dalle_pytorch/cli/train_flags.py. Nothing is
imported here: import the module you need.
"""
