"""The SASRec teacher: trained on the training part, saved without pickles, asked at item starts."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from userlayer.sdk.model import load_model
from userlayer.tools.eval.sasrec import SASRecConfig
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.pretrain import PretrainConfig, pretrain
from userlayer.tools.train.teacher import load_teacher, train_teacher

SMALL = SASRecConfig(d=16, blocks=1, max_len=10, epochs=2, patience=0, batch_size=64)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, synth_data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    train_teacher(synth_data_dir, out, SMALL)
    return out


def test_a_teacher_is_saved_as_safetensors_and_json_and_loads_the_same(
    teacher_dir: Path, synth_data_dir: Path
) -> None:
    assert sorted(p.name for p in teacher_dir.iterdir()) == ["teacher.json", "teacher.safetensors"]
    doc = json.loads((teacher_dir / "teacher.json").read_text())
    assert doc["sasrec"]["d"] == 16 and len(doc["items"]) == len(set(doc["items"]))
    a, b = load_teacher(teacher_dir), load_teacher(teacher_dir)
    seq = torch.tensor([[0, 0, 3, 7, 1], [5, 2, 9, 4, 8]])
    assert torch.equal(a.model.scores(seq), b.model.scores(seq))
    assert not a.model.training


def test_its_probabilities_at_each_item_start_read_the_items_before_it(
    teacher_dir: Path, tiny_head_model_dir: Path
) -> None:
    from userlayer.sdk.model.tokens import CTX, item_tokens
    from userlayer.sdk.semantic_ids import SemanticIdTable

    base = load_model(tiny_head_model_dir)
    table = SemanticIdTable.load(tiny_head_model_dir / "sids.json")
    t = load_teacher(teacher_dir)
    ids = sorted(table.codes)
    head_items = [None] * base.cfg.n_items
    for i in ids:
        head_items[int(base.item_index(torch.tensor([table.codes[i]]))[0])] = i
    t.to_head(head_items)  # type: ignore[arg-type]
    rows = [ids[3:7], ids[10:12], ids[20:25]]  # 4, 2 and 5 items
    toks = [
        [x for i in r for x in [CTX, *item_tokens(table.level_sizes, table.codes[i])]] for r in rows
    ]
    width = max(map(len, toks))
    tok = torch.tensor([[0] * (width - len(r)) + r for r in toks])
    start, index = base.item_starts(tok)
    got = t.probs(start, index)
    assert got.shape == (11, base.cfg.n_items)
    at = 0
    index_of = {i: n + 1 for n, i in enumerate(t.item_ids)}
    for r in rows:
        assert float(got[at].abs().sum()) == 0.0  # a row's first item: nothing before it
        for k in range(1, len(r)):
            want = t.model.scores(torch.tensor([[index_of[i] for i in r[:k]]]))[0]
            want = want[[index_of[i] for i in head_items]].softmax(-1)  # type: ignore[index]
            assert torch.allclose(got[at + k], want, atol=1e-5)
        at += len(r)
    hot = t.probs(start, index, temperature=0.05)
    assert float(hot[1].max()) > float(got[1].max())  # a low temperature sharpens it


def test_a_bad_teacher_directory_is_refused_by_name(teacher_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "t"
    shutil.copytree(teacher_dir, bad)
    doc = json.loads((bad / "teacher.json").read_text())
    (bad / "teacher.json").write_text(json.dumps({**doc, "format": "pickle"}))
    with pytest.raises(ToolsError, match="is not a teacher"):
        load_teacher(bad)
    (bad / "teacher.json").write_text(json.dumps({**doc, "sasrec": {**doc["sasrec"], "d": 32}}))
    with pytest.raises(ToolsError, match="does not fit"):
        load_teacher(bad)
    (bad / "teacher.json").write_text(json.dumps({**doc, "items": []}))
    with pytest.raises(ToolsError, match="`items`"):
        load_teacher(bad)
    twice = [doc["items"][0], *doc["items"][:-1]]
    (bad / "teacher.json").write_text(json.dumps({**doc, "items": twice}))
    with pytest.raises(ToolsError, match="more than once"):
        load_teacher(bad)
    (bad / "teacher.json").write_text(json.dumps({**doc, "best_epoch": "x"}))
    with pytest.raises(ToolsError, match="does not fit"):
        load_teacher(bad)
    (bad / "teacher.json").write_text(json.dumps({**doc, "training_digest": None}))
    with pytest.raises(ToolsError, match="training_digest"):
        load_teacher(bad)
    (bad / "teacher.json").write_text(json.dumps(doc))
    (bad / "teacher.safetensors").write_bytes(b"\x80\x04not weights")
    with pytest.raises(ToolsError, match="weights"):
        load_teacher(bad)
    t = load_teacher(teacher_dir)
    with pytest.raises(ToolsError, match="does not know 1"):
        t.to_head([*t.item_ids[:5], "no-such-item"])


def test_pretraining_distills_from_the_teacher_and_records_it(
    teacher_dir: Path, synth_data_dir: Path, tmp_path: Path
) -> None:
    cfg = PretrainConfig(
        epochs=1, batch_size=32, model=TINY, min_steps=3, valid_users=0, item_head=True
    )
    plain = pretrain(synth_data_dir, tmp_path / "plain", cfg)
    taught_cfg = replace(cfg, teacher=str(teacher_dir), distill=0.5)
    taught = pretrain(synth_data_dir, tmp_path / "taught", taught_cfg)
    assert taught.losses[0] > plain.losses[0]  # same batch, same init: the KL is added
    doc = json.loads((tmp_path / "taught" / "config.json").read_text())
    assert doc["pretrain"]["distill"] == 0.5 and doc["pretrain"]["teacher"] == str(teacher_dir)
    assert doc["pretrain"]["distill_codes"] is True
    head = pretrain(synth_data_dir, tmp_path / "head", replace(taught_cfg, distill_codes=False))
    assert plain.losses[0] < head.losses[0] < taught.losses[0]  # the head's KL, not the codes'
    doc = json.loads((tmp_path / "head" / "config.json").read_text())
    assert doc["pretrain"]["distill_codes"] is False
    load_model(tmp_path / "taught")  # the teacher is not part of the model
    assert not (tmp_path / "taught" / "teacher.safetensors").exists()
    with pytest.raises(ToolsError, match="`distill` needs a `teacher`"):
        PretrainConfig(distill=0.5)
    with pytest.raises(ToolsError, match="`distill` needs"):
        PretrainConfig(distill=0.5, teacher=str(teacher_dir))  # no item head
    with pytest.raises(ToolsError, match="`distill_temperature`"):
        PretrainConfig(distill_temperature=0.0)
    with pytest.raises(ToolsError, match="only with `distill`"):
        PretrainConfig(teacher=str(teacher_dir), item_head=True)
    with pytest.raises(ToolsError, match="`distill_codes` False chooses"):
        PretrainConfig(distill_codes=False, item_head=True)  # would record a plain run as distilled


def test_a_teacher_of_other_data_or_too_short_a_history_is_refused_before_training(
    teacher_dir: Path, synth_data_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    doc = json.loads((other / "teacher.json").read_text())
    (other / "teacher.json").write_text(json.dumps({**doc, "training_digest": "0" * 64}))
    cfg = PretrainConfig(
        epochs=1,
        batch_size=32,
        model=TINY,
        valid_users=0,
        item_head=True,
        distill=1.0,
        teacher=str(teacher_dir),
    )
    with pytest.raises(ToolsError, match="other data"):
        pretrain(synth_data_dir, tmp_path / "m", replace(cfg, teacher=str(other)))
    short = tmp_path / "short"
    train_teacher(synth_data_dir, short, replace(SMALL, max_len=3, epochs=1))
    with pytest.raises(ToolsError, match="longer --max-len"):
        pretrain(synth_data_dir, tmp_path / "m2", replace(cfg, teacher=str(short)))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.safetensors"))
