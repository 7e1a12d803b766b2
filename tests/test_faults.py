"""Faults a careful user runs into, each as it happens (issue 25, part A): a full disk or a file size limit
while a run writes, two processes for one run directory, a stopped fit resumed by name, a max_steps stop
resumed from a copy of its run, a run whose validation outputs go non-finite, and a sweep whose options
changed. Tiny models (one Mixer block), synthetic data, a handful of steps."""
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from kanvision.cli import main
from kanvision.train import atomic
from kanvision.train.atomic import WriteError, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CONFIG = {  # 64 synthetic images, 16 held out: 3 steps of 16 per epoch; constant lr (no scheduler)
    "model": {"model": "kan_mixer_tiny_p4_32", "kan": "bspline", "model_kwargs": {"num_blocks": 1},
              "kan_kwargs": {"compile": False}, "lr_scheduler": None,
              "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}}},
    "data": {"dataset": "synthetic", "batch_size": 16, "num_workers": 0, "synthetic_size": 64, "augment": "cifar",
             "val_split": 16},
    "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
                "devices": 1, "log_every_n_steps": 1, "num_sanity_val_steps": 0},
    "test_after_fit": False,
}


class SaveFinal(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), Path(trainer.log_dir) / "final.pt")


class WeightsAtFailure(L.Callback):
    """Writes whether every weight was finite when the run failed, beside its status.json."""

    def on_exception(self, trainer, pl_module, exception):
        finite = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
        (Path(trainer.log_dir) / "weights_finite").write_text(str(finite))


class SigtermAtStep(L.Callback):
    """SIGTERM to this process once the given optimizer step is done, as a scheduler's notice."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _config(tmp_path, **sections) -> str:
    cfg = json.loads(json.dumps(CONFIG))
    for section, values in sections.items():
        if isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fit(cfg, root, name, *extra):
    return main(["fit", "--config", cfg, f"--trainer.default_root_dir={root}", f"--name={name}", *extra])


def _refused(capsys, *args) -> str:
    """The one line a refused command ends with (SystemExit), stderr included."""
    with pytest.raises(SystemExit) as e:
        _fit(*args)
    message = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ 1. writes
@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free space"), (errno.EROFS, "read-only"),
                                       (errno.EACCES, "writable"), (errno.EFBIG, "ulimit -f")])
def test_a_failed_write_keeps_the_old_file_and_says_the_fix(tmp_path, monkeypatch, code, fix):
    path = tmp_path / "status.json"
    atomic_write_text(path, "old\n")

    def fail(self, data):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(atomic._Recording, "write", fail)
    with pytest.raises(WriteError) as e:
        atomic_write_text(path, "new\n")
    line = str(e.value)
    assert line.startswith(f"cannot write {path}: ") and fix in line and f"({errno.errorcode[code]})" in line
    assert "\n" not in line
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["status.json"]  # no temporary file left


LOGGER_WRITES = r"""
import json, os, resource, signal, sys
from pathlib import Path
from kanvision.train.atomic import WriteError
from kanvision.train.loggers import AppendingWriter

d = Path(sys.argv[1])
w = AppendingWriter(str(d))
w.log_metrics({"train/loss": 2.5}, step=0)
w.save()
w.log_hparams({"lr": 0.001})
csv_path, yaml_path = d / "metrics.csv", d / "hparams.yaml"
before = {p.name: p.read_bytes() for p in (csv_path, yaml_path)}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
limit = csv_path.stat().st_size + 8
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
said = []
for what, act in [("append", lambda: (w.log_metrics({"train/loss": 1.0 / 3}, step=1), w.save())),
                  ("new column", lambda: (w.log_metrics({"val/acc1": 0.5}, step=2), w.save())),
                  ("hparams", lambda: w.log_hparams({"note": "x" * 4 * limit}))]:
    try:
        act()
        said.append([what, "no error"])
    except WriteError as e:
        said.append([what, str(e)])
    w.metrics = []
after = {p.name: p.read_bytes() for p in (csv_path, yaml_path)}
print(json.dumps(dict(said=said, same=[after[k] == before[k] for k in sorted(before)],
                      left=sorted(p.name for p in d.iterdir()))))
"""


def test_logger_writes_past_a_file_size_limit_keep_the_files_whole(tmp_path):
    """metrics.csv and hparams.yaml under a real EFBIG (ulimit -f just above metrics.csv's size): a row append,
    a rewrite for a new column and an hparams.yaml write each fail with one line, and each file is byte for
    byte what it was (Lightning's writers would leave half a row, or a truncated table / yaml), no temp left."""
    proc = subprocess.run([sys.executable, "-c", LOGGER_WRITES, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for what, line in out["said"]:
        assert re.fullmatch(r"cannot write \S+/(metrics\.csv|hparams\.yaml): file too large .* \(EFBIG\)", line), (what, line)
    assert out["same"] == [True, True] and out["left"] == ["hparams.yaml", "metrics.csv"]


@pytest.mark.slow
def test_fit_past_a_file_size_limit_stops_in_one_line_and_keeps_the_checkpoints(tmp_path):
    """A real kernel refusal in a `kanvision fit` process: from epoch 1 on its files may not grow past 256 KiB
    (`ulimit -f`: EFBIG; the CLI ignores SIGXFSZ, which would kill it unexplained), so epoch 1's checkpoint
    cannot be written. Exit 1 with one line naming the file and the fix, status.json "failed" with that
    line, epoch 0's checkpoints whole, no half-written file under any name."""
    cfg = _config(tmp_path, trainer={"max_epochs": 2})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "import sys; from kanvision.cli import main; sys.exit(main())",
                           "fit", "--config", cfg, f"--trainer.default_root_dir={tmp_path}", "--name=run",
                           "--trainer.callbacks+=test_faults.FileSizeLimitFromEpoch1"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"kanvision: error: cannot write \S+/checkpoints/\S+\.ckpt: file too large .* \(EFBIG\)",
                        last), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run = tmp_path / "run" / "version_0"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == last[len("kanvision: error: "):]
    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts and all("epoch000" in p.name or p.name == "last.ckpt" for p in ckpts), ckpts
    assert all(torch.load(p, weights_only=True)["global_step"] == 3 for p in ckpts)  # whole: they load
    assert not list(run.rglob(".*.tmp-*"))


class FileSizeLimitFromEpoch1(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_export_on_a_full_disk_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path)
    _fit(cfg, tmp_path, "run")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    before = _files(out)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic._Recording, "write", full)
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "run"), "--out", str(out), "--force"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"kanvision export: error: cannot write \S+model\.safetensors: no space left .*\(ENOSPC\)", err)
    assert _files(out) == before


# ------------------------------------------------------------------------ 2 + 3. owner, resume
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])
rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)
rundir.lock_run_dir(sys.argv[2])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_sigterm_then_ckpt_path_last_resumes_in_its_own_directory_with_one_owner(tmp_path, capsys):
    """The SIGTERM message names a checkpoint that exists; `--ckpt_path last` finds it (not a fresh run in
    version_1); while another process holds the run directory a second resume is refused in one line; once
    that process is killed (no clean-up of its own), the resume goes on."""
    cfg = _config(tmp_path, trainer={"max_epochs": 2})
    with pytest.raises(SystemExit) as stopped:
        _fit(cfg, tmp_path, "run", "--trainer.callbacks+=test_faults.SigtermAtStep",
             "--trainer.callbacks.init_args.step=2")
    assert stopped.value.code == 130
    named = re.search(r"--ckpt_path (\S+)", capsys.readouterr().err).group(1)
    assert Path(named).is_file() and Path(named).name == "interrupted-step000002.ckpt"
    run = tmp_path / "run" / "version_0"
    assert json.loads((run / "status.json").read_text())["checkpoint"] == named

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO / "kanvision" / "train" / "rundir.py"), str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _refused(capsys, cfg, tmp_path, "run", "--ckpt_path=last")
        assert f"{run} is in use by another process (pid {holder.pid} " in line, line
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    _fit(cfg, tmp_path, "run", "--ckpt_path=last")
    assert f"--ckpt_path last: {named}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "version_1").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert (run / "run.lock").read_text().startswith(f"pid {os.getpid()} on ")  # who held it, for a refusal


def test_ckpt_path_last_without_a_checkpoint_says_where_it_looked(tmp_path, capsys):
    line = _refused(capsys, _config(tmp_path), tmp_path, "never-ran", "--ckpt_path=last")
    assert "no resumable checkpoint" in line and str(tmp_path / "never-ran") in line and "last.ckpt" in line
    assert not (tmp_path / "never-ran").exists()


@pytest.mark.slow
def test_max_steps_stop_resumed_from_a_copy_equals_one_run_straight_through(tmp_path, capsys):
    """max_steps 4 stops in mid-epoch 1 (3 steps an epoch); the run directory is copied elsewhere and resumed
    there with max_steps 7 (`--ckpt_path last`): the weights equal a run of 7 steps straight through, with
    augmentation and momentum, and nothing of the old place is written or named."""
    cfg = _config(tmp_path, trainer={"max_epochs": -1})
    save = "--trainer.callbacks+=test_faults.SaveFinal"
    _fit(cfg, tmp_path / "a", "full", save, "--trainer.max_steps=7")
    _fit(cfg, tmp_path / "a", "part", save, "--trainer.max_steps=4")
    shutil.copytree(tmp_path / "a" / "part", tmp_path / "b" / "part", symlinks=True)
    old = _files(tmp_path / "a" / "part")
    _fit(cfg, tmp_path / "b", "part", save, "--trainer.max_steps=7", "--ckpt_path=last")
    assert _files(tmp_path / "a" / "part") == old  # the old place untouched
    full = torch.load(tmp_path / "a" / "full" / "version_0" / "final.pt")
    resumed = torch.load(tmp_path / "b" / "part" / "version_0" / "final.pt")
    assert [k for k in full if not torch.equal(full[k], resumed[k])] == []
    # The moved run's checkpoint records name its new place only.
    ckpt = torch.load(tmp_path / "b" / "part" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    paths = [v for state in ckpt["callbacks"].values() if isinstance(state, dict)
             for k, v in state.items() if k.endswith(("path", "dirpath")) and v]
    assert paths and all(str(tmp_path / "b") in p for p in paths), paths


# ----------------------------------------------------------------------------------- 4. divergence
def test_non_finite_validation_with_finite_weights_ends_diverged(tmp_path, capsys):
    """SGD at lr 1e10, one step an epoch: the training loss of that step is finite, the weights after it are
    finite and huge, the validation outputs are not finite. No "best" checkpoint, no test score, exit != 0
    (before: "finished", a best checkpoint of those weights and a test top-1)."""
    cfg = _config(tmp_path, data={"synthetic_size": 32}, trainer={"max_epochs": 1}, test_after_fit=True,
                  model={"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0e10}}})
    line = _refused(capsys, cfg, tmp_path, "run", "--trainer.callbacks+=test_faults.WeightsAtFailure")
    assert line.startswith("kanvision: error: validation diverged: val/loss nan after step 1"), line
    run = tmp_path / "run" / "version_0"
    assert (run / "weights_finite").read_text() == "True"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "diverged" and status["stage"] == "validation" and "test" not in status
    assert not list(run.rglob("*.ckpt"))


# ----------------------------------------------------------------------------------------- 5. sweeps
SWEEP_BASE = json.loads(json.dumps(CONFIG))
SWEEP_BASE.pop("test_after_fit")


def _sweep_files(tmp_path, grid):
    base, grid_file = tmp_path / "base.yaml", tmp_path / "grid.yaml"
    base.write_text(yaml.safe_dump(SWEEP_BASE))
    grid_file.write_text(grid if isinstance(grid, str) else yaml.safe_dump(grid))
    return str(base), str(grid_file)


@pytest.mark.parametrize("grid, message", [
    ({"model.kan": ["bspline"], "model.no_such_option": [1]}, r"refuses its options .*no_such_option"),
    ({"data.batch_size": [16, 1.5]}, r"run batch_size-1.5_seed0: `kanvision fit` refuses its options .*batch_size"),
    ({"model.kan": ["bspline", "splinez"]}, r"model\.kan 'splinez': unknown kan kind"),
    ({"model.kan": ["none", None]}, r"model\.kan lists the same value twice \('none' and None\)"),
    ("model.kan: [bspline]\nmodel.kan: [none]\n", r"key 'model\.kan' is given twice"),
], ids=["unknown-key", "bad-type", "unknown-kind", "repeated-value", "repeated-key"])
def test_the_whole_grid_is_checked_before_the_first_run(tmp_path, capsys, grid, message):
    base, grid_file = _sweep_files(tmp_path, grid)
    assert main(["sweep", "--config", base, "--grid", grid_file, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "s" / "runs").exists()


@pytest.mark.slow
def test_a_sweep_reruns_a_run_whose_options_changed_into_a_new_version(tmp_path, capsys):
    from kanvision.sweep.grid import plan_runs, read_grid, resolved_base

    base, grid_file = _sweep_files(tmp_path, {"model.kan": ["bspline"]})
    out = tmp_path / "s"
    # A run finished with lr 0.5 (its fingerprint recorded), then the sweep is run with lr 0.05.
    old_flags = ["--model.optimizer.init_args.lr=0.5"]
    (old,) = plan_runs(read_grid(grid_file), 1, [base], old_flags, out, resolved_base([base], old_flags))
    root = out / "runs" / old.name
    (root / "version_0").mkdir(parents=True)
    (root / "version_0" / "status.json").write_text('{"status": "finished"}\n')
    (root / "fingerprint.json").write_text(json.dumps(dict(old.fingerprint, from_version=0)))
    argv = ["sweep", "--config", base, "--grid", grid_file, "--out", str(out), "--", "--model.optimizer.init_args.lr=0.05"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert (f"rerun {old.name} into version_1: its options changed since it ran (--model.optimizer.init_args.lr "
            "(0.5 -> 0.05)" in said), said
    assert json.loads((root / "version_1" / "status.json").read_text())["status"] == "finished"
    assert json.loads((root / "version_0" / "status.json").read_text())["status"] == "finished"  # kept
    assert main(argv) == 0  # unchanged now: done
    assert f"skip {old.name}: finished already" in capsys.readouterr().out
    assert not (root / "version_2").exists()
    # The SLURM launcher records the change when it writes the array: the report shows no old result for the run
    # meanwhile, and its array task (`--task 0`, the local launcher's rules) reruns it into a new version.
    slurm = argv[:-2] + ["--launcher", "slurm", "--", "--model.optimizer.init_args.lr=0.5"]
    assert main(slurm) == 0
    assert (f"rerun {old.name} into version_2 (its array task reruns it): its options changed since it ran "
            "(--model.optimizer.init_args.lr (0.05 -> 0.5)") in capsys.readouterr().out
    assert main(["sweep", "--out", str(out), "--report-only"]) == 0
    with open(out / "results.csv") as f:
        assert {r["run"]: r["status"] for r in csv.DictReader(f)}[old.name] == "not run with its current options"
    assert main(["sweep", "--out", str(out), "--task", "0"]) == 0
    assert json.loads((root / "version_2" / "status.json").read_text())["status"] == "finished"
    assert main(["sweep", "--out", str(out), "--task", "0"]) == 0  # done now: nothing runs
    assert f"skip {old.name}: finished already" in capsys.readouterr().out and not (root / "version_3").exists()
    assert main(["sweep", "--out", str(out), "--task", "1"]) == 2
    assert "--task 1: the sweep at" in capsys.readouterr().err
    # One sweep at a time in a directory.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO / "kanvision" / "train" / "rundir.py"), str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(argv) == 2
        assert f"{out} is in use by another process (pid {holder.pid} " in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
