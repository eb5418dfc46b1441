"""The `dist-ae` command: `train` and `evaluate`. A mistake a user can make is one line on stderr and exit status 2;
TensorFlow is imported only after the arguments are known to be good, so those answers come at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from dist_ae.config import COLLECTIVES, LOSSES, PRECISIONS, STRATEGIES, TrainConfig
from dist_ae.errors import Preempted, TrainingError, UsageError

DEFAULTS = TrainConfig()


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (and exits 2) instead of the usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> Parser:
    parser = Parser(prog="dist-ae", description="Train the MNIST autoencoder on one device, several devices, "
                                                "several hosts, or Horovod ranks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="train the autoencoder", description="Train the notebook's autoencoder. "
                                "A --logdir that holds a checkpoint is resumed from it.")
    train.add_argument("--data", default=DEFAULTS.data, help="auto (default: full MNIST if cached or downloadable, else "
                       "the sample), mnist, sample (5,000 real digits shipped with dist-ae), synthetic, a .npz file, "
                       "or a folder of MNIST IDX files")
    train.add_argument("--logdir", default=DEFAULTS.logdir, help="where logs, checkpoints and exports go "
                       "(default: a new folder under runs/)")
    train.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="epochs to train in all (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                       help="global batch size, split evenly over the replicas (default %(default)s)")
    train.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate,
                       help="RMSprop learning rate (default %(default)s)")
    train.add_argument("--loss", choices=LOSSES, default=DEFAULTS.loss,
                       help="bce: per-pixel binary cross-entropy (default); cce: the notebook's categorical "
                       "cross-entropy; mse: mean squared error")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the weights and the data order")
    train.add_argument("--strategy", choices=STRATEGIES, default=DEFAULTS.strategy,
                       help="auto (default: horovod under horovodrun, multiworker when TF_CONFIG names several workers, mirrored with "
                       "several GPUs, else default), default (one device), mirrored (all local GPUs, or --cpu-devices), "
                       "multiworker (MultiWorkerMirroredStrategy), horovod (one replica per rank)")
    train.add_argument("--cpu-devices", type=int, default=DEFAULTS.cpu_devices,
                       help="split the CPU into N logical devices (mirrored replicas without GPUs)")
    train.add_argument("--steps-per-call", type=int, default=DEFAULTS.steps_per_call,
                       help="training steps per tf.function call (default %(default)s)")
    train.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=DEFAULTS.jit_compile,
                       help="XLA-compile the forward and backward pass (default on)")
    train.add_argument("--synthetic-samples", type=int, default=DEFAULTS.synthetic_samples,
                       help="how many digits --data synthetic generates (default %(default)s)")
    train.add_argument("--image-every", type=int, default=DEFAULTS.image_every,
                       help="write TensorBoard pictures every N epochs, 0 for never (default %(default)s)")

    train.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                       help="checkpoint every N steps as well as after every epoch (default: epochs only)")
    train.add_argument("--keep-checkpoints", type=int, default=DEFAULTS.keep_checkpoints,
                       help="how many of the newest checkpoints to keep (default %(default)s)")
    train.add_argument("--deterministic", action="store_true",
                       help="TensorFlow's op determinism: a killed and rerun job ends bit-identical to an unbroken one")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in a --logdir that holds another run (its files are deleted)")
    train.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                       help="auto (default: float16 with loss scaling on GPUs of compute capability 7.x, bfloat16 on "
                       "8.0 and newer, float32 on CPUs), float32, mixed_float16, mixed_bfloat16")
    train.add_argument("--check-every", type=int, default=DEFAULTS.check_every,
                       help="compare every replica's weights every N epochs (always at the end)")
    train.add_argument("--scale-lr", action="store_true", help="multiply the learning rate by the number of replicas")
    train.add_argument("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs,
                       help="with --scale-lr: ramp from the base learning rate to the scaled one over N epochs")
    train.add_argument("--fp16-allreduce", action="store_true", help="horovod: send gradients as float16")
    train.add_argument("--collective", choices=COLLECTIVES, default=DEFAULTS.collective,
                       help="multiworker: all-reduce implementation, ring, nccl (GPUs) or auto (default)")
    train.add_argument("--collective-timeout", type=float, default=DEFAULTS.collective_timeout,
                       help="multiworker: seconds a collective waits for a lost worker before the job fails "
                       "(default %(default)s; 0: forever)")

    launch = commands.add_parser("launch", help="start a multi-worker cluster on this machine",
                                 description="Start N multiworker training workers on 127.0.0.1, each with its "
                                 "TF_CONFIG; stop them all if one fails. Arguments after -- go to `dist-ae train`.")
    launch.add_argument("--workers", type=int, default=2, help="how many workers (default %(default)s)")
    launch.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of dist-ae train")

    bench = commands.add_parser("bench", help="measure training throughput against the notebook and the hardware",
                                description="Time dist-ae's training loop against Keras model.fit as the notebook "
                                "trains, and against an XLA matrix product; print a table and write JSON.")
    bench.add_argument("--json", default="bench/results.json", help="where to write the figures (default %(default)s)")
    bench.add_argument("--tiny", action="store_true", help="a few steps only: checks that the benchmark runs")

    evaluate = commands.add_parser("evaluate", help="validation loss of an exported model",
                                   description="Print the validation loss of an exported autoencoder.")
    evaluate.add_argument("--model", required=True, help="an export folder (holding autoencoder.keras) or a .keras file")
    evaluate.add_argument("--data", default="auto", help="the digits to evaluate on, as for train (validation split)")
    evaluate.add_argument("--loss", choices=LOSSES, default=None,
                          help="default: the loss the model was trained with, else bce")
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in vars(args).items() if key in fields})


def evaluate(args: argparse.Namespace) -> None:
    path = Path(args.model)
    model_file = path / "autoencoder.keras" if path.is_dir() else path
    if not model_file.is_file():
        raise UsageError(f"--model {args.model}: no autoencoder.keras there (export folders hold one)")
    loss = args.loss
    about = model_file.parent / "dist_ae.json"
    if loss is None and about.is_file():
        loss = json.loads(about.read_text()).get("loss")
    loss = loss or "bce"

    import keras
    import numpy as np

    from dist_ae import data, pipeline
    from dist_ae.model import per_digit_loss

    try:
        model = keras.models.load_model(model_file)
    except Exception as error:  # Keras raises many kinds for a damaged archive
        raise UsageError(f"--model {args.model}: cannot load {model_file} ({str(error).splitlines()[0]})") from None
    if tuple(model.input_shape) != (None, pipeline.PIXELS) or tuple(model.output_shape) != (None, pipeline.PIXELS):
        raise UsageError(f"--model {args.model}: maps {model.input_shape} to {model.output_shape}; "
                         "expected an autoencoder of (None, 784) digits")
    arrays = data.load(args.data)
    loss_fn = per_digit_loss(loss)
    total = 0.0
    for digits in pipeline.validation_dataset(arrays.x_test, batch_size=1000):
        total += float(np.sum(loss_fn(digits, model(digits, training=False))))
    print(f"val_loss ({loss}) = {total / arrays.num_test:.6f} over {arrays.num_test} validation digits")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our own lines
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            from dist_ae.run import train

            train(train_config(args))
        elif args.command == "evaluate":
            evaluate(args)
        elif args.command == "bench":
            from dist_ae import bench

            bench.main(tiny=args.tiny, json_path=args.json)
        elif args.command == "launch":
            from dist_ae.launch import launch

            return launch(args.workers, args.train_args)
    except UsageError as error:
        print(f"dist-ae: error: {error}", file=sys.stderr)
        return 2
    except Preempted as error:
        print(f"dist-ae: stopped by a signal {error}, with a checkpoint; rerun the same command to resume",
              file=sys.stderr)
        return Preempted.exit_status
    except TrainingError as error:
        print(f"dist-ae: training stopped: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the disk filled up, a file system went away: not a bug of ours, and no traceback
        print(f"dist-ae: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dist-ae: interrupted", file=sys.stderr)
        return 130
    return 0
