"""``RUN/preferences.jsonl``: one line per answer (who, when, the pair, the answer), appended as the user answers.

Each answer is one ``write`` of one whole line to a file opened ``O_APPEND``, fsynced before the page hears back: a
killed server loses no answer it acknowledged, and appends never interleave. A line torn by a crash mid-write (or
edited by hand into something else) is skipped on reading, like the trainer's log.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

ANSWERS = ("left", "right", "tie")  # "tie": the user could not tell


@dataclass(frozen=True)
class Answer:
    who: str
    when: str
    left: str  # checkpoint key "TRIAL/EPOCH"
    right: str
    answer: str

    def to_json(self) -> dict[str, object]:
        def side(key: str) -> dict[str, int]:
            trial, epoch = key.split("/")
            return {"trial": int(trial), "epoch": int(epoch)}

        return {"who": self.who, "when": self.when, "pair": {"left": side(self.left), "right": side(self.right)},
                "answer": self.answer}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def append_answer(path: Path, answer: Answer) -> None:
    data = (json.dumps(answer.to_json()) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_answers(path: Path) -> list[Answer]:
    if not path.is_file():
        return []
    answers = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            pair = row["pair"]
            left, right = (f"{int(pair[s]['trial'])}/{int(pair[s]['epoch'])}" for s in ("left", "right"))
            if row["answer"] in ANSWERS:
                answers.append(Answer(str(row.get("who", "")), str(row.get("when", "")), left, right, row["answer"]))
        except (ValueError, KeyError, TypeError):
            continue
    return answers
