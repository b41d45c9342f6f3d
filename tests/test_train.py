"""Training engine: models, learning,
resume equivalence, train_many across processes, dynamics, the train CLI."""
import contextlib
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

from unseen_fast.data import DataError, ImageIndex
from unseen_fast.dynamics import DynamicsRecorder, load_dynamics
from unseen_fast.errors import UserError
from unseen_fast.fused_loss import STATS
from unseen_fast.models import ARCHS, build_model
from unseen_fast.parallel import TrainJob, train_many
from unseen_fast.data import make_loader
from unseen_fast.evaluate import accuracy_report, predict_logits
from unseen_fast.precise_bn import recalibrate_batchnorm
from unseen_fast.train import TrainConfig, load_model, lr_factor, train


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("arch", list(ARCHS))
def test_models(arch):
    small = build_model(arch, 10, image_size=32)
    out = small(torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last))
    assert out.shape == (2, 10)
    if arch != "fastnet":
        assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
        large = build_model(arch, 5, image_size=224)
        assert large.conv1.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="unknown arch 'vgg'; choose one of fastnet, resnet18"):
        build_model("vgg", 10, image_size=32)


def test_schedule_shapes():
    factors = [lr_factor(s, 100, 10, "onecycle") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[-1] < 0.02
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    cosine = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert cosine[10] == 1.0 and cosine[55] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="schedule must be"):
        TrainConfig(schedule="step")


# ----------------------------------------------------------------- training
@pytest.fixture(scope="module")
def cifar_index():
    from data_fixtures import cifar10_root

    return ImageIndex.from_folder(cifar10_root())


def test_cpu_network_learns_cifar(cifar_index, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.permutation(len(cifar_index))
    train_ids, val_ids = ids[:3000], ids[3000:4000]
    config = TrainConfig(epochs=3, batch_size=128, image_size=32)
    model = train(config, cifar_index, train_ids, tmp_path / "run", loader_kwargs=dict(cache_dir=tmp_path / "c"))
    logits = predict_logits(model, cifar_index, val_ids, image_size=32, cache_dir=tmp_path / "c")
    report = accuracy_report(logits, torch.from_numpy(cifar_index.labels[val_ids]), cifar_index.classes)
    print(f"validation top1 after 3 epochs on 3,000 images: {report['top1']:.3f}")
    assert report["top1"] > 0.30  # chance is 0.10


def digits_config(**kw):
    return TrainConfig(**(dict(epochs=3, batch_size=128, image_size=8, threads=1) | kw))


def state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_the_same_weights(tmp_path, monkeypatch):
    digits = ImageIndex.digits()
    ids = np.arange(0, 1797, 2)
    config = digits_config(record_dynamics=True)
    train(config, digits, ids, tmp_path / "straight")

    from unseen_fast import train as train_module

    real_save = train_module._save_checkpoint

    def crash_after_first_epoch(out_dir, *args):
        real_save(out_dir, *args)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, digits, ids, tmp_path / "resumed")
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["epochs_done"] == 1
    train(config, digits, ids, tmp_path / "resumed")
    assert same_weights(state(tmp_path / "straight"), state(tmp_path / "resumed"))
    a, b = load_dynamics(tmp_path / "straight" / "dynamics"), load_dynamics(tmp_path / "resumed" / "dynamics")
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    with pytest.raises(ValueError, match="different training config.*'lr': \\(0.05, 0.1\\)"):
        train(digits_config(lr=0.1, record_dynamics=True), digits, ids, tmp_path / "resumed")


def test_checkpoint_every_n_epochs_resumes_from_the_last_one(tmp_path, monkeypatch):
    """Every 2 epochs and after the last; a crash in epoch 4 resumes after
    epoch 2 (a new --checkpoint-every is fine) with the same final weights."""
    digits = ImageIndex.digits()
    ids = np.arange(0, 1797, 2)
    config = digits_config(epochs=5, checkpoint_every=2)
    from unseen_fast import train as train_module

    saved = []
    real_save = train_module._save_checkpoint

    def record(writer, config, job, model, opt, epochs_done):
        saved.append(epochs_done)
        real_save(writer, config, job, model, opt, epochs_done)

    monkeypatch.setattr(train_module, "_save_checkpoint", record)
    train(config, digits, ids, tmp_path / "straight")
    assert saved == [2, 4, 5]
    real_epoch = train_module._train_epoch
    calls = {"n": 0}

    def crash_in_epoch_4(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_epoch(*args)

    monkeypatch.setattr(train_module, "_train_epoch", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(config, digits, ids, tmp_path / "resumed")
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["epochs_done"] == 2
    train(dataclasses.replace(config, checkpoint_every=1), digits, ids, tmp_path / "resumed")
    assert same_weights(state(tmp_path / "straight"), state(tmp_path / "resumed"))


def test_a_failed_checkpoint_write_stops_the_training(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)  # the checkpoint is serialized in memory, then written
    with pytest.raises(UserError, match=r"cannot write .*checkpoint.pt \([0-9,]+ bytes\): No space left on device; [0-9,]+ bytes free") as raised:
        train(digits_config(epochs=2), ImageIndex.digits(), np.arange(0, 600), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # The error's tracebacks keep the writer's frames: a view of the in-memory
    # checkpoint left unreleased there made CPython 3.12's GC segfault later.
    assert not unreleased_views(raised.value)


def unreleased_views(error: BaseException) -> list:
    views, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            values = list(tb.tb_frame.f_locals.values())
            values += [item for value in values if isinstance(value, (tuple, list)) for item in value]  # *args
            for value in values:
                if isinstance(value, memoryview):
                    try:
                        value.nbytes  # a released view raises
                        views.append(value)
                    except ValueError:
                        pass
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return views


def test_sigterm_checkpoints_after_the_epoch_and_resume_finishes_the_run(tmp_path):
    """A scheduler's SIGTERM (sent here in epoch 2 of the first fold model):
    one line, exit 143, the epoch's checkpoint kept; --resume gives the
    coreset of an uninterrupted run."""
    import subprocess
    import sys

    args = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "4", "--checkpoint-every", "3",
            "--quiet", "--seed", "2"]
    out = tmp_path / "run"
    code = ("import os, signal, sys\n"
            "from unseen_fast import train as t\n"
            "real = t._train_epoch\n"
            "calls = []\n"
            "def epoch(*a):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(*a)\n"
            "t._train_epoch = epoch\n"
            "from unseen_fast.cli import main\n"
            f"sys.exit(main({args + ['--out', str(out)]!r}))\n")
    stopped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr[-2000:]  # pre-empted, not bad input (2)
    assert stopped.stderr.strip().splitlines()[-1] == (
        "unseen-fast prune: training fold0 stopped by SIGTERM after epoch 2/4 (checkpoint saved); the same command "
        "with --resume continues"), stopped.stderr[-2000:]  # no "error:": a pre-emption, not a mistake
    assert torch.load(out / "models" / "fold0" / "checkpoint.pt", weights_only=False)["epochs_done"] == 2
    cli = [sys.executable, "-m", "unseen_fast.cli"]
    assert subprocess.run(cli + args + ["--out", str(out), "--resume"], capture_output=True).returncode == 0
    straight = subprocess.run(cli + args + ["--out", str(tmp_path / "straight")], capture_output=True)
    assert straight.returncode == 0
    assert np.array_equal(np.load(out / "coreset.npy"), np.load(tmp_path / "straight" / "coreset.npy"))


def sigterm_in_epoch(monkeypatch, number):
    """Send this process SIGTERM from inside its ``number``-th epoch (counted over all jobs)."""
    import os
    import signal

    from unseen_fast import train as train_module

    real_epoch, calls = train_module._train_epoch, {"n": 0}

    def epoch(*args):
        calls["n"] += 1
        if calls["n"] == number:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_epoch(*args)

    monkeypatch.setattr(train_module, "_train_epoch", epoch)


def test_sigterm_in_a_last_epoch_still_stops_the_run(tmp_path, monkeypatch):
    """The job that was finishing saves its last checkpoint; the next job never starts."""
    digits = ImageIndex.digits()
    jobs = [TrainJob(f"job{k}", np.arange(k, 1797, 4), str(tmp_path / f"job{k}")) for k in range(2)]
    sigterm_in_epoch(monkeypatch, 2)  # the last of job0's 2 epochs
    with pytest.raises(UserError, match="training job0 stopped by SIGTERM after epoch 2/2"):
        train_many(jobs, digits_config(epochs=2), digits)
    assert torch.load(tmp_path / "job0" / "checkpoint.pt", weights_only=False)["epochs_done"] == 2
    assert not (tmp_path / "job1" / "checkpoint.pt").exists()


def test_sigterm_reaches_jobs_trained_concurrently_in_threads(tmp_path, monkeypatch):
    """One GPU trains its fold models in threads; the handler lives in the main thread."""
    from unseen_fast.parallel import concurrently

    digits = ImageIndex.digits()
    jobs = [TrainJob(f"job{k}", np.arange(k, 1797, 3), str(tmp_path / f"job{k}")) for k in range(3)]
    sigterm_in_epoch(monkeypatch, 2)
    with pytest.raises(UserError, match="stopped by SIGTERM after epoch"):
        concurrently(jobs, digits_config(epochs=6), digits, torch.device("cpu"), None)
    done = [torch.load(tmp_path / f"job{k}" / "checkpoint.pt", weights_only=False)["epochs_done"] for k in range(3)]
    assert all(1 <= epochs < 6 for epochs in done), done  # each stopped at an epoch end, checkpoint saved


def test_a_sigterm_after_the_last_look_is_not_lost():
    """A SIGTERM while the last checkpoint is written (after the loop's last
    look at the request) reaches the handler outside the block on exit,
    instead of being cleared by the next job's block."""
    import signal

    from unseen_fast.checkpoint import stop_on_sigterm

    outer = []
    previous = signal.signal(signal.SIGTERM, lambda *args: outer.append("outer handler"))
    try:
        with stop_on_sigterm() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and outer == []  # inside: only the request
        assert outer == ["outer handler"]
        with stop_on_sigterm() as stop:  # the next job starts clean
            assert not stop.requested
        assert outer == ["outer handler"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_elastic_launchers_signal_handlers_are_undone(monkeypatch):
    """torch's elastic launcher sets handlers raising its SignalException and
    never restores ours; a signal it met becomes Terminated (SIGTERM)."""
    import signal

    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from unseen_fast import parallel
    from unseen_fast.checkpoint import Terminated

    def launch_that_meets(sig):
        def elastic_launch(config, entrypoint):
            def run(*args):
                signal.signal(signal.SIGTERM, lambda *a: None)  # as elastic's PContext.start does
                raise SignalException(f"Process {os.getpid()} got signal: {sig}", sigval=sig)
            return run
        return elastic_launch

    ours = lambda *args: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        monkeypatch.setattr(launcher, "elastic_launch", launch_that_meets(signal.SIGTERM))
        with pytest.raises(Terminated):
            parallel._launch([], digits_config(), ImageIndex.digits(), workers=2, use_gpus=False, loader_kwargs={})
        assert signal.getsignal(signal.SIGTERM) is ours
        monkeypatch.setattr(launcher, "elastic_launch", launch_that_meets(signal.SIGINT))
        with pytest.raises(KeyboardInterrupt) as stop:
            parallel._launch([], digits_config(), ImageIndex.digits(), workers=2, use_gpus=False, loader_kwargs={})
        assert not isinstance(stop.value, Terminated) and signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_recalibrated_batchnorm_holds_the_mean_over_equal_batches():
    """Precise BatchNorm: the running mean is the mean of the training
    images as augmented in one more epoch, the running variance the mean of
    the batches' variances."""
    digits = ImageIndex.digits()
    ids = np.arange(3, 1797, 3)[:512]  # 4 equal batches of 128
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(192, 10))
    config = TrainConfig(batch_size=128, image_size=8, amp="off", bn_recalibration_samples=10_000)
    model.eval()
    assert recalibrate_batchnorm(model, digits, ids, config) == 512
    assert not model.training  # the mode is restored
    batches = [images.double() for images, _, _ in
               make_loader(digits, ids, train=True, batch_size=128, image_size=8, seed=0, epoch=config.epochs)]
    mean = torch.cat(batches).mean((0, 2, 3))
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    norm = model[0]
    # float32 batch reductions over 128 x 64 values: error bound ~ n * 2^-24 = 5e-4 (relative)
    assert torch.allclose(norm.running_mean.double(), mean, rtol=5e-4, atol=5e-4)
    assert torch.allclose(norm.running_var.double(), var, rtol=5e-4, atol=5e-4)
    # a limit below the id count uses a seeded subset, rounded down to whole batches
    assert recalibrate_batchnorm(model, digits, ids, TrainConfig(**{**vars(config), "bn_recalibration_samples": 300})) == 256
    assert recalibrate_batchnorm(model, digits, ids[:5], config) == 5  # fewer than a batch: one batch
    assert recalibrate_batchnorm(model, digits, ids, TrainConfig(image_size=8, bn_recalibration_samples=0)) == 0
    with pytest.raises(ValueError, match="bn_recalibration_samples must be >= 0, got -1"):
        TrainConfig(bn_recalibration_samples=-1)


def test_eval_mode_matches_the_trained_model_on_a_small_fold(tmp_path):
    """The README's digits fold: ~450 samples, batch 256, 10 epochs = 10
    optimizer steps. The BatchNorm momentum averages get 10 updates and stay
    near their initial values, so without recalibration the eval-mode model
    is at chance even on its own training data."""
    digits = ImageIndex.digits()
    ids, unseen = np.arange(0, 1797, 4), np.setdiff1d(np.arange(1797), np.arange(0, 1797, 4))
    labels = torch.from_numpy(digits.labels)

    def accuracy(samples, out_dir):
        logits = predict_logits(load_model(out_dir, 10), digits, samples, image_size=8)
        return float((logits.argmax(1) == labels[samples]).double().mean())

    config = TrainConfig(image_size=8, threads=1)
    train(config, digits, ids, tmp_path / "precise")
    train(TrainConfig(**{**vars(config), "bn_recalibration_samples": 0}), digits, ids, tmp_path / "momentum")
    assert accuracy(ids, tmp_path / "momentum") < 0.3
    assert accuracy(ids, tmp_path / "precise") > 0.6
    assert accuracy(unseen, tmp_path / "precise") > 0.5


def test_train_many_processes_match_in_process(tmp_path):
    digits = ImageIndex.digits()
    config = digits_config(epochs=2)

    def jobs(folder):
        return [TrainJob(f"fold{k}", np.arange(k, 1797, 3), str(tmp_path / folder / f"fold{k}"), seed=k)
                for k in range(3)]

    train_many(jobs("inline"), config, digits)
    train_many(jobs("workers"), config, digits, nproc=2)
    for k in range(3):
        assert same_weights(state(tmp_path / "inline" / f"fold{k}"), state(tmp_path / "workers" / f"fold{k}"))


def test_a_job_can_start_from_a_trained_model(tmp_path):
    """init_from (auto selection's fine-tuned proxies): the job starts from
    the saved weights, not from its seed's fresh ones."""
    digits = ImageIndex.digits()
    train_many([TrainJob("source", np.arange(0, 1797, 2), str(tmp_path / "source"), seed=0)],
               digits_config(epochs=1), digits)
    frozen = digits_config(epochs=1, lr=0.0)  # no step moves a weight: what it ends with is where it started
    train_many([TrainJob("tuned", np.arange(1, 1797, 2), str(tmp_path / "tuned"), seed=5,
                         init_from=str(tmp_path / "source")),
                TrainJob("fresh", np.arange(1, 1797, 2), str(tmp_path / "fresh"), seed=5)], frozen, digits)
    source, tuned, fresh = (state(tmp_path / name) for name in ("source", "tuned", "fresh"))
    weights = [k for k in source if k.endswith("weight") and source[k].ndim > 1]  # conv / linear: no BN statistics
    assert weights and all(torch.equal(source[k], tuned[k]) for k in weights)
    assert not any(torch.equal(source[k], fresh[k]) for k in weights)


def test_a_checkpoint_is_resumed_only_for_its_own_samples_and_starting_model(tmp_path):
    """A rerun into a folder whose checkpoint was trained on other ids, or
    from another starting model, is refused (it would have been resumed or
    returned as finished); the same job, even with its source folder moved,
    is resumed."""
    import shutil

    digits = ImageIndex.digits()
    config = digits_config(epochs=1)
    train(config, digits, np.arange(0, 1797, 2), tmp_path / "a")
    train(config, digits, np.arange(1, 1797, 2), tmp_path / "b")
    ids = np.arange(0, 900)
    train(config, digits, ids, tmp_path / "tuned", init_from=str(tmp_path / "a"))
    before = state(tmp_path / "tuned")
    with pytest.raises(UserError, match=r"trained on other samples.*'samples': \(900, 899\)"):
        train(config, digits, ids[:-1], tmp_path / "tuned", init_from=str(tmp_path / "a"))
    with pytest.raises(UserError, match="trained on other samples or from another starting model.*ids_sha256"):
        train(config, digits, ids[::-1].copy(), tmp_path / "tuned", init_from=str(tmp_path / "a"))
    with pytest.raises(UserError, match="another starting model.*starts_from"):
        train(config, digits, ids, tmp_path / "tuned", init_from=str(tmp_path / "b"))
    with pytest.raises(UserError, match="starts_from"):
        train(config, digits, ids, tmp_path / "tuned")  # a fresh start
    shutil.move(tmp_path / "a", tmp_path / "moved")
    train(config, digits, ids, tmp_path / "tuned", init_from=str(tmp_path / "moved"))  # finished: returned
    assert same_weights(before, state(tmp_path / "tuned"))


def test_failing_worker_stops_the_run_and_keeps_finished_models(tmp_path):
    digits = ImageIndex.digits()
    # Worker 1 trains "finished" to the end, then fails on "bad"; worker 0 is
    # stopped wherever it is.
    jobs = [TrainJob("other", np.arange(200), str(tmp_path / "other")),
            TrainJob("finished", np.arange(100), str(tmp_path / "finished")),
            TrainJob("bad", np.array([0, 5000]), str(tmp_path / "bad"))]
    jobs.insert(2, TrainJob("other2", np.arange(100), str(tmp_path / "other2")))
    # the worker's own error, of its own kind (a DataError is the user's to fix: one line in the CLI)
    with pytest.raises(DataError, match="training worker 1 failed: sample id 5000 is out of range"):
        train_many(jobs, digits_config(epochs=1), digits, nproc=2)
    assert load_model(tmp_path / "finished", 10)(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_dynamics_recorder_indexes_by_sample_id(tmp_path, gen):
    recorder = DynamicsRecorder(tmp_path / "dyn", epochs=2, num_samples=10)
    ids = torch.randperm(10, generator=gen)[:6]
    stats = torch.randn(6, len(STATS), generator=gen)
    recorder.record(1, ids, stats)
    recorder.flush()
    arrays = load_dynamics(tmp_path / "dyn")
    for column, name in enumerate(STATS):
        assert np.array_equal(arrays[name][1, ids.numpy()], stats[:, column].numpy())
        assert np.isnan(arrays[name][0]).all()
        assert np.isnan(np.delete(arrays[name][1], ids.numpy())).all()
    with pytest.raises(ValueError, match=r"records .*shape.: \[2, 10\]"):
        DynamicsRecorder(tmp_path / "dyn", epochs=3, num_samples=10)


def test_training_records_every_trained_sample(tmp_path):
    digits = ImageIndex.digits()
    ids = np.arange(3, 1797, 4)
    train(digits_config(epochs=2, record_dynamics=True, record_probabilities=True), digits, ids, tmp_path / "run")
    dynamics = load_dynamics(tmp_path / "run" / "dynamics")
    loss = dynamics["loss"]
    # full batches only: 449 ids, batch 128 -> 384 recorded per epoch, by sample id
    assert (np.isfinite(loss).sum(1) == 384).all()
    assert np.isfinite(loss[:, ids]).any(0).mean() > 0.9
    assert np.isnan(np.delete(loss, ids, axis=1)).all()
    probs = dynamics["probs"].astype(np.float64)  # (epochs, N, C) softmax, same samples recorded
    assert probs.shape == (2, len(digits), 10)
    assert np.array_equal(np.isfinite(probs).all(2), np.isfinite(loss))
    seen = np.isfinite(loss)
    assert np.allclose(probs[seen].sum(1), 1, atol=1e-2)
    p_true = np.take_along_axis(probs, np.broadcast_to(digits.labels[None, :, None], (2, len(digits), 1)), 2)[..., 0]
    assert np.allclose(p_true[seen], dynamics["p_true"][seen], atol=2e-3)


def test_train_cli_on_digits(tmp_path, capsys, caplog):
    from unseen_fast.cli import main

    caplog.set_level("INFO")
    out = tmp_path / "run"
    assert main(["train", "--data", "builtin:digits", "--epochs", "4", "--batch-size", "64",
                 "--out", str(out)]) == 0
    assert "training on 1618 samples; 179 more held out for validation (--val-fraction 0.1)" in caplog.text
    report = json.loads((out / "eval.json").read_text())
    assert set(report) >= {"top1", "per_class", "class_accuracy_variance"}
    assert report["top1"] > 0.5 and len(report["per_class"]) == 10
    assert "validation top1" in capsys.readouterr().out
    model = load_model(out, 10)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)
    subset = tmp_path / "subset.npy"
    np.save(subset, np.arange(0, 1797, 5))
    assert main(["train", "--data", "builtin:digits", "--epochs", "1", "--subset", str(subset),
                 "--val-fraction", "0", "--out", str(tmp_path / "sub")]) == 0
    config = json.loads((tmp_path / "sub" / "train_config.json").read_text())
    assert config["train_samples"] == 360 and config["val_samples"] == 0
    from unseen_fast.cli import _train_config, build_parser  # --compile reaches the training config

    for flags, compiled in (([], False), (["--compile"], True)):
        args = build_parser().parse_args(["train", "--data", "builtin:digits", "--out", str(out), *flags])
        assert _train_config(args, ImageIndex.digits(), "cpu").compile is compiled


def test_more_workers_than_jobs_trains_each_job_data_parallel(tmp_path):
    """4 gloo workers, 2 jobs: each job runs DDP over 2 ranks (each rank
    half of the ids, half of each batch); step count, checkpoint and a
    learned model are checked (local BatchNorm statistics make bitwise
    comparison meaningless)."""
    digits = ImageIndex.digits()
    jobs = [TrainJob(f"j{k}", np.arange(k, 1797, 2), str(tmp_path / f"j{k}"), seed=k) for k in range(2)]
    train_many(jobs, digits_config(epochs=4, batch_size=64, record_dynamics=True), digits, nproc=4)
    for k in range(2):
        # both ranks recorded their shards into the one set of arrays: every id of the job, every epoch
        # (a shard has 450 ids, 14 full batches of 32 = 448 recorded per rank and epoch)
        loss = load_dynamics(tmp_path / f"j{k}" / "dynamics")["loss"]
        assert np.isnan(np.delete(loss, jobs[k].ids, axis=1)).all()
        assert (np.isfinite(loss).sum(1) >= 2 * 448 - 2).all()
        saved = torch.load(tmp_path / f"j{k}" / "checkpoint.pt", weights_only=False)
        assert saved["epochs_done"] == 4
        steps = saved["scheduler"]["last_epoch"]
        assert steps == 4 * (-(-899 // 2) // 32)  # each rank: half the ids, 32 of each 64-sample step
        model = load_model(tmp_path / f"j{k}", 10)
        held_out = np.arange(1 - k, 1797, 2)
        logits = predict_logits(model, digits, held_out, image_size=8)
        assert (logits.argmax(1).numpy() == digits.labels[held_out]).mean() > 0.5


HOST_TRANSFERS = ("item", "cpu", "tolist", "numpy", "nonzero", "__float__", "__bool__", "__int__")


@contextlib.contextmanager
def counting_host_transfers():
    """Counts calls of the Tensor methods that copy to the host or wait for the device."""
    calls, saved = {"n": 0}, {name: getattr(torch.Tensor, name) for name in HOST_TRANSFERS}
    for name, real in saved.items():
        def counted(self, *args, _real=real, **kwargs):
            calls["n"] += 1
            return _real(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)
    try:
        yield calls
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def one_epoch(samples: int, device="cpu", recorder=None, amp="off", **fields):
    from unseen_fast.data import make_loader
    from unseen_fast.train import _Optimization, _train_epoch

    digits = ImageIndex.digits()
    config = TrainConfig(batch_size=64, image_size=8, amp=amp, **fields)
    model = build_model("fastnet", 10, image_size=8).to(device)
    opt = _Optimization.create(config, model, torch.device(device), per_rank=samples)
    loader = make_loader(digits, np.arange(samples), train=True, batch_size=64, image_size=8, backend="resident",
                         device=device, seed=0)
    return lambda: _train_epoch(config, model, opt, loader, recorder, 0, torch.device(device))


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_a_training_epoch_makes_no_host_transfer_per_step(amp):
    """Loss and accuracy stay on the device until the epoch's log line; the
    resident loader gathers on the device; with fp16 the GradScaler's
    overflow check stays there too (fused SGD): the count must not grow with
    the number of steps (4 vs 16 here)."""
    counts = []
    for samples in (256, 1024):
        run = one_epoch(samples, amp=amp)
        with counting_host_transfers() as calls:
            run()
        counts.append(calls["n"])
    assert counts[0] == counts[1] == 0, counts


def test_recording_dynamics_copies_to_the_host_once_per_epoch(tmp_path):
    """The fitting framework's per-sample statistics (and probabilities) stay
    on the device until the epoch's flush: as many host copies at 4 steps as
    at 16, and every trained sample recorded."""
    counts = []
    for samples in (256, 1024):
        recorder = DynamicsRecorder(tmp_path / str(samples), epochs=1, num_samples=1797, num_classes=10)
        run = one_epoch(samples, recorder=recorder, record_dynamics=True, record_probabilities=True)
        with counting_host_transfers() as calls:
            run()
        counts.append(calls["n"])
        arrays = load_dynamics(tmp_path / str(samples))
        assert np.isfinite(arrays["loss"][0, :samples]).all() and np.isnan(arrays["loss"][0, samples:]).all()
        assert np.allclose(arrays["probs"][0, :samples].astype(np.float32).sum(1), 1, atol=0.02)
    assert counts[0] == counts[1] <= 6, counts  # ids, statistics, probabilities: .cpu() and .numpy() each


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_training_epoch_never_syncs_on_the_gpu(amp):
    one_epoch(1024, device="cuda", amp=amp)()  # warm-up: cuDNN, the allocator and the resident upload may sync once
    run = one_epoch(1024, device="cuda", amp=amp)  # the model's weights are copied up (a sync) before the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()  # the epoch itself: the loader's per-epoch copies included
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_concurrent_jobs_give_the_models_of_sequential_ones(tmp_path, device):
    """The fold models of `--gpus 1` train in threads: each must depend on its
    own seed only (seeded inits serialized, per-loader generators)."""
    from unseen_fast.parallel import concurrently

    digits = ImageIndex.digits()
    config = digits_config(epochs=1)

    def jobs(folder):
        return [TrainJob(f"fold{k}", np.arange(k, 1797, 4), str(tmp_path / folder / f"fold{k}"), seed=k)
                for k in range(4)]

    for job in jobs("sequential"):
        train_many([job], config, digits, device=device)
    concurrently(jobs("threads"), config, digits, device, None)
    for k in range(4):
        a, b = state(tmp_path / "sequential" / f"fold{k}"), state(tmp_path / "threads" / f"fold{k}")
        if device == "cpu":
            assert same_weights(a, b)
        else:  # cuDNN's backward may sum in another order: equal up to rounding
            assert all(torch.allclose(a[n].float(), b[n].float(), rtol=1e-3, atol=1e-4) for n in a)


def test_data_parallel_training_reaches_the_single_process_accuracy(tmp_path):
    """batch_size is the global batch: 2 ranks take the steps one process
    takes (it used to be per rank: half the steps, one predicted class)."""
    digits = ImageIndex.digits()
    train_ids, held_out = np.arange(0, 1797, 2), np.arange(1, 1797, 2)
    config = digits_config(epochs=4, batch_size=64, threads=1)
    accuracy = {}
    for name, nproc in (("one", None), ("two", 2)):
        train_many([TrainJob(name, train_ids, str(tmp_path / name), seed=0)], config, digits, nproc=nproc)
        saved = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        assert saved["scheduler"]["last_epoch"] == 4 * (899 // 64)  # the same optimizer steps
        logits = predict_logits(load_model(tmp_path / name, 10), digits, held_out, image_size=8)
        accuracy[name] = float((logits.argmax(1).numpy() == digits.labels[held_out]).mean())
    assert accuracy["two"] > accuracy["one"] - 0.05 and accuracy["one"] > 0.5, accuracy


def test_the_scoring_pass_copies_to_the_host_once(monkeypatch):
    """Grouped by fold, whole batches, results kept on the device: the
    number of host transfers does not grow with the number of batches."""
    from unseen_fast import evaluate
    from unseen_fast.evaluate import score_samples

    monkeypatch.setattr(evaluate, "EVAL_BATCH", 32)  # several batches per fold: 4 vs 12
    digits = ImageIndex.digits()
    models = [build_model("fastnet", 10, image_size=8).eval() for _ in range(4)]
    config = TrainConfig(batch_size=32, image_size=8, amp="off", backend="resident")
    counts = []
    for samples in (512, 1536):
        fold = np.arange(samples) % 4
        use = np.stack([fold != k for k in range(4)])
        with counting_host_transfers() as calls:
            scored = score_samples(models, digits, np.arange(samples), config, "entropy", use=use)
        counts.append(calls["n"])
        scores, correct = scored.scores, scored.correct
        assert np.isfinite(scored.predicted[use]).all() and (scored.confidence[use] >= 0.1 - 1e-6).all()
        assert np.array_equal(scored.predicted[use] == digits.labels[:samples][np.nonzero(use)[1]],
                              correct[use] == 1.0)
        assert np.isnan(scores[fold, np.arange(samples)]).all() and np.isfinite(scores[use]).all()
        assert set(np.unique(correct[use])) <= {0.0, 1.0}
    assert counts[0] == counts[1] <= 2, counts


def test_progress_in_logs_that_are_not_a_terminal(caplog):
    """Without a terminal, training progress comes as log lines (every 30 s by
    default; every batch here), never as a bar."""
    import logging

    from unseen_fast.progress import logged_progress

    batches = [(None, torch.zeros(64), None)] * 3
    with caplog.at_level(logging.INFO, logger="unseen_fast.train"):
        assert len(list(logged_progress(batches, "epoch 1/2", every_s=0.0))) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("epoch 1/2: 1/3 batches, 64 samples,") and "s left" in lines[0]
    assert len(lines) == 2  # none after the last batch: the epoch line follows


def test_train_quiet_prints_only_the_results(tmp_path):
    """`train --quiet`: no log lines or progress bars on stderr, the results
    on stdout; without it the log says what it trains."""
    import subprocess
    import sys

    def run(*extra):
        args = ["train", "--data", "builtin:digits", "--epochs", "1", "--out", str(tmp_path / str(len(extra))), *extra]
        code = f"import sys; from unseen_fast.cli import main; sys.exit(main({args!r}))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    quiet, loud = run("--quiet"), run()
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert quiet.stderr == "", quiet.stderr[-2000:]
    assert "validation top1" in quiet.stdout and "model:" in quiet.stdout
    assert "training model on" in loud.stderr


def test_cuda_trainings_ask_for_repeatable_kernels(monkeypatch):
    """Two same-seed runs on a GPU must keep the same coreset: deterministic
    cuDNN algorithms for CUDA trainings (the CPU is left alone) and cuBLAS's
    repeatable workspace set on import unless the user chose one."""
    import subprocess
    import sys

    from unseen_fast import train as train_module

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    assert train_module._reproducible_on("cpu") == torch.device("cpu") and not torch.backends.cudnn.deterministic
    assert train_module._reproducible_on("cuda:0") == torch.device("cuda:0") and torch.backends.cudnn.deterministic
    code = "import os, unseen_fast; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout == ":4096:8\n"
    mine = subprocess.run([sys.executable, "-c", code], env=dict(env, CUBLAS_WORKSPACE_CONFIG=":16:8"),
                          capture_output=True, text=True)
    assert mine.stdout == ":16:8\n"
