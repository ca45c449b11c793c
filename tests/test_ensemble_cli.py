"""``loratune ensemble`` on files: writes the merged LoRA; user errors are one line with exit code 2."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from loratune.cli import main
from loratune.lora.merge import module_delta


def _lora(path, seed: int, rank: int = 4) -> None:
    g = torch.Generator().manual_seed(seed)
    save_file({"m.lora_down.weight": torch.randn(rank, 6, generator=g), "m.lora_up.weight": torch.randn(5, rank, generator=g),
               "m.alpha": torch.tensor(float(rank))}, str(path))


def test_ensemble_concat_cli(tmp_path, capsys) -> None:
    _lora(tmp_path / "a.safetensors", 0)
    _lora(tmp_path / "b.safetensors", 1, rank=2)
    out = tmp_path / "m.safetensors"
    code = main(["ensemble", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--out", str(out),
                 "--weights", "0.7,0.3"])
    assert code == 0
    a, b, m = (load_file(str(p)) for p in (tmp_path / "a.safetensors", tmp_path / "b.safetensors", out))
    torch.testing.assert_close(module_delta(m, "m"), 0.7 * module_delta(a, "m") + 0.3 * module_delta(b, "m"))


def test_ensemble_user_errors(tmp_path, capsys) -> None:
    _lora(tmp_path / "a.safetensors", 0)
    _lora(tmp_path / "b.safetensors", 1, rank=2)
    args = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "m.safetensors")]
    assert main(["ensemble", *args, "--method", "avg"]) == 2
    assert "equal ranks" in capsys.readouterr().err
    assert main(["ensemble", *args, "--weights", "1"]) == 2
    assert "2 LoRAs" in capsys.readouterr().err
    assert main(["ensemble", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    assert main(["ensemble", args[0], str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors: not a readable safetensors file" in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "m.safetensors").exists()
