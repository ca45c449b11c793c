"""``loratune optimize`` argument errors (one line, exit 2) and how trial failures are described."""

from __future__ import annotations

import subprocess

import torch

from loratune.cli import main
from loratune.errors import LoratuneError
from loratune.search.trial import describe_failure
from loratune.train import TrainingDiverged


def test_optimize_user_errors(tmp_path, capsys) -> None:
    assert main(["optimize"]) == 2
    assert "give a CONFIG" in capsys.readouterr().err
    assert main(["optimize", "--resume"]) == 2
    assert "--run" in capsys.readouterr().err
    assert main(["optimize", "--resume", "--run", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("search: {space: {nope: {type: float, low: 0, high: 1}}}\n")
    assert main(["optimize", str(config), "--backend", "slurm"]) == 2
    assert "--backend" in capsys.readouterr().err
    assert main(["optimize", str(config), "--run", str(tmp_path / "run")]) == 2
    assert "search.space" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()
    (tmp_path / "a-file").write_text("x")
    assert main(["optimize", str(config), "--run", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a-file: not a directory" in err, err
    for override, field in [("search.sampler=cmaes", "search.sampler"), ("search.pruner=asha", "search.pruner"),
                            ("search.space.rank.choices=[]", "search.space.rank"), ("search.n_trials", "--set")]:
        assert main(["optimize", str(config), "--run", str(tmp_path / "run"), "--set", override]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field in err, err
    # A corrupt study database on --resume: one line naming the storage, not an sqlalchemy traceback.
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "study.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    assert main(["optimize", "--resume", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "search.storage: cannot open" in err, err
    assert main(["dashboard", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run) in err, err


def test_failure_reasons() -> None:
    assert describe_failure(TrainingDiverged("training diverged at epoch 2, step 7: loss is nan")).startswith("diverged:")
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert describe_failure(oom).startswith("out of memory:")
    assert describe_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory")).startswith("out of memory")
    # Messages that are empty or blank still give a reason (the type), never an IndexError.
    assert describe_failure(RuntimeError()) == "RuntimeError"
    assert describe_failure(ValueError("\n")) == "ValueError"
    assert describe_failure(LoratuneError("")) == "LoratuneError"
    assert describe_failure(KeyError("lora_up")) == "KeyError: 'lora_up'"
    assert describe_failure(subprocess.CalledProcessError(3, ["accelerate", "launch"])) == "trainer exited with code 3"
    assert describe_failure(LoratuneError("train.external: command not found")) == "train.external: command not found"


def test_resume_keeps_the_runs_backend(tmp_path) -> None:
    from loratune.commands.optimize import resumed_backend

    (tmp_path / "config.yaml").write_text("search:\n  backend: ray\n")
    assert resumed_backend(tmp_path, None) == "ray"  # no need to repeat --backend ray
    assert resumed_backend(tmp_path, "local") == "local"
    assert resumed_backend(tmp_path / "missing", None) == "local"
